"""``letta-ops serve``: every deployment of prefect.yaml, served from this process."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tasks.errors import EXIT_OK
from .output import emit, render_table


def cmd_serve(args: argparse.Namespace) -> int:
    from .deployments import build_runner_deployments, load_deployments, serve_all

    if args.dry_run:
        # Everything serving needs but the serving: each entrypoint imported from the installed
        # package, each schedule and parameter checked by Prefect; nothing started.
        rows = [
            {
                "name": d.name,
                "flow": d.flow_name,
                "schedules": len(d.schedules or []),
                "parameters": sorted(d.parameters or {}),
            }
            for d in build_runner_deployments(args.file)
        ]
        emit(
            rows,
            args.json,
            render=lambda r: render_table(r, ["name", "flow", "schedules", "parameters"]),
        )
        return EXIT_OK
    if args.list:
        rows = [
            {
                "name": d["name"],
                "flow": d["entrypoint"],
                "schedule": ", ".join(s.get("cron", "") for s in d.get("schedules") or []),
                "timezone": ", ".join(s.get("timezone", "") for s in d.get("schedules") or []),
            }
            for d in load_deployments(args.file)
        ]
        emit(
            rows,
            args.json,
            render=lambda r: render_table(r, ["name", "flow", "schedule", "timezone"]),
        )
        return EXIT_OK
    serve_all(args.file)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``serve``."""
    p = sub.add_parser(
        "serve", parents=[common], help="serve every deployment of prefect.yaml from this process"
    )
    p.add_argument("--file", type=Path, default=None, help="prefect.yaml to read")
    p.add_argument("--list", action="store_true", help="only list the deployments")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="load every deployment's flow and schedule as serving would, then exit",
    )
    p.set_defaults(func=cmd_serve)
