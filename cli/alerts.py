"""``letta-ops alerts install``: Prefect automations that notify when a job fails."""

from __future__ import annotations

import argparse

from ..tasks.errors import EXIT_OK
from .output import emit


def cmd_alerts_install(args: argparse.Namespace) -> int:
    from ..tasks.runs.automations import install_alerts

    result = install_alerts(args.webhook_url, args.block, args.stale_hours)
    emit(
        result,
        args.json,
        render=lambda r: "\n".join(
            [f"notifications go to Prefect block {r['block']}"] + list(r["automations"])
        ),
    )
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``alerts install``."""
    alerts = sub.add_parser("alerts", help="Prefect automations that notify on failures")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    p = alerts_sub.add_parser(
        "install",
        parents=[common],
        help="create (or replace) the automations and their notification block",
        description="On the Prefect server of PREFECT_API_URL: notify when a backup, a drill "
        "or an upgrade fails, crashes or times out, and when no backup completed for "
        "--stale-hours.",
    )
    p.add_argument("--webhook-url", metavar="URL", help="save a webhook block POSTing JSON here")
    p.add_argument(
        "--block",
        default="letta-ops-alerts",
        metavar="NAME",
        help="the notification block (saved from --webhook-url, else one you saved: Slack, "
        "e-mail...)",
    )
    p.add_argument(
        "--stale-hours", type=float, default=26.0, help="alert when no backup completed (26)"
    )
    p.set_defaults(func=cmd_alerts_install)
