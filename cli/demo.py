"""``letta-ops demo``: the main job on embedded PostgreSQL, S3 and a pinned Letta."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_FAILED, EXIT_OK
from .output import emit, progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from .demo_job import DemoReport


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo_environment import require_demo_extra, stop_prefect_ui
    from .demo_job import run_demo

    if args.stop_ui:
        emit({"stopped": stop_prefect_ui()}, args.json)
        return EXIT_OK
    require_demo_extra()  # before anything starts
    report: DemoReport = run_demo(log=progress, ui=not args.no_ui)
    emit(report, args.json, render=lambda r: r.text)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the main job on embedded PostgreSQL, S3 and a pinned Letta",
        description="Start an embedded PostgreSQL + pgvector, a local S3 "
        "endpoint and a pinned old Letta with sample agents on "
        "127.0.0.1, run the main job, print the report, stop all.",
    )
    p.add_argument(
        "--no-ui",
        action="store_true",
        help="run on a temporary Prefect server instead of leaving a UI running",
    )
    p.add_argument("--stop-ui", action="store_true", help="stop the demo's Prefect UI server")
    p.set_defaults(func=cmd_demo)
