"""``letta-ops upgrade``: to a pinned Letta version after a verified backup; rolls back on
failure. Acts (after a confirmation unless ``--yes``); ``--dry-run`` prints the plan only."""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK
from ..tasks.runs.confirmation import asking
from .options import lock_options, reset_options, store_options, version
from .output import confirm, emit, phases_lines, render_table, with_progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.rehearse import RehearsalReport
    from ..flows.reports.upgrade import UpgradeReport


def render_plan(report: UpgradeReport) -> str:
    plan = report.plan
    lines = [
        f"upgrade {plan.server} ({plan.base_url}): Letta {plan.from_version} -> "
        f"{plan.to_version}, strategy {plan.strategy}"
        + (" (LOSSY: agent files only)" if plan.lossy else " (lossless)"),
        f"agents {plan.agents}, database {plan.database_bytes} bytes, "
        f"expected downtime about {plan.expected_downtime_seconds} s "
        f"({plan.expected_downtime_source})",
        f"database: PostgreSQL {plan.postgres_major}, role {plan.database_role}, "
        f"emptied by {plan.reset_mode} when restoring",
        f"runtime: {plan.runtime}",
        *(["left alone (not Letta's): " + ", ".join(plan.left_alone)] if plan.left_alone else []),
        "steps:",
    ]
    lines += [f"  {i}. {step}" for i, step in enumerate(plan.steps, 1)]
    if report.move is not None:
        move = report.move
        lines.append(
            f"move from SQLite first: {move.sqlite_file} -> {move.target}, {move.rows} rows, "
            f"{move.bytes} bytes, about {move.expected_seconds:.0f} s"
        )
    if plan.renames:
        lines.append(f"renames ({plan.name_rule}):")
        lines += [f"  {agent_id}: {c.old!r} -> {c.new!r}" for agent_id, c in plan.renames.items()]
    trip = {a: c for a, c in plan.transit_renames.items() if a not in plan.renames}
    if trip:
        lines.append("names changed only to pass the export, given back after the import:")
        lines += [f"  {agent_id}: {c.old!r} (travels as {c.new!r})" for agent_id, c in trip.items()]
    return "\n".join(lines)


def render_upgrade(report: UpgradeReport) -> str:
    text = render_plan(report) + f"\noutcome: {report.outcome}"
    if report.downtime_seconds is not None:
        text += f", downtime {report.downtime_seconds} s, backup {report.backup_set}"
    rows = [row.model_dump(mode="json") for row in report.verification or []]
    if rows:
        text += "\n" + render_table(
            rows,
            [
                "name_before",
                "name_after",
                "messages_before",
                "messages_after",
                "blocks_before",
                "blocks_after",
            ],
        )
    if report.profile_change:
        text += "\nnow on PostgreSQL; change the server's profile for the next runs:"
        text += "".join(f"\n  {change}" for change in report.profile_change)
    return "\n".join([text, *phases_lines(report.phases)])


def render_rehearsal(report: RehearsalReport) -> str:
    plan = report.plan
    lines = [
        f"rehearsal of {plan.server} {plan.from_version} -> {plan.to_version} "
        f"({plan.strategy}) on a copy of {report.source_set}: {report.outcome}",
        f"measured downtime {report.downtime_seconds} s:",
    ]
    lines += [f"  {s.step}: {s.seconds} s" for s in report.downtime_steps]
    if report.not_carried:
        nc = report.not_carried
        lines.append(
            f"agent files would not carry {nc.messages} messages, "
            f"{nc.archival_passages} archival passages"
        )
    lines += [f"renames: {a}: {c.old!r} -> {c.new!r}" for a, c in plan.renames.items()]
    lines += [f"log: {line}" for line in report.warnings]
    return "\n".join(lines)


def cmd_rehearse(args: argparse.Namespace) -> int:
    from ..flows.rehearse import rehearse

    report = with_progress(
        lambda: rehearse(
            to_version=args.to,
            server=args.server,
            store=args.store,
            strategy=args.strategy,
            from_set=args.from_set,
        )
    )
    emit(report, args.json, render=render_rehearsal)
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    from ..flows.upgrade import upgrade

    if args.rehearse:
        return cmd_rehearse(args)
    common = {
        "to_version": args.to,
        "server": args.server,
        "store": args.store,
        "strategy": args.strategy,
        "reset": args.reset,
        "target_database": args.to_database,
    }
    if args.dry_run:
        emit(upgrade(**common, dry_run=True), args.json, render=render_plan)
        return EXIT_OK

    def ask(plan: UpgradeReport) -> None:
        text = render_plan(plan)
        if not plan.plan.rehearsal_current and plan.move is None:  # a move has no rehearsal
            text += (
                "\nWARNING: no rehearsal of this upgrade is newer than the newest backup; "
                f"'letta-ops upgrade --to {args.to} --strategy {args.strategy} --rehearse' "
                "runs it on a copy first and measures the downtime."
            )
        confirm(text, "Proceed with the upgrade?", "upgrade")

    with asking(ask) if not args.yes else contextlib.nullcontext():
        report = with_progress(
            lambda: upgrade(**common, approval=args.approval, lock_timeout_seconds=args.wait)
        )
    emit(report, args.json, render=render_upgrade)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``upgrade``."""
    p = sub.add_parser(
        "upgrade",
        parents=[common, store_options(), lock_options(0), reset_options()],
        help="upgrade to a pinned Letta version after a verified backup; rolls back on failure",
        description="Pre-flight (health, versions, disk, agent names under the target's rule), "
        "a verified pinned backup, then strategy 'migrate' (stop, alembic upgrade the same "
        "database, fix sequences, start the target: lossless) or 'rebuild' (export agents, "
        "empty the database (see --reset), migrate, start, import agents with sanitized names). "
        "Any failure after the first destructive step restores the backup and starts the old "
        "version. Asks for confirmation unless --yes; --dry-run prints the plan only.",
    )
    p.add_argument("--to", required=True, type=version, metavar="X.Y.Z", help="target release")
    p.add_argument("--strategy", choices=["migrate", "rebuild"], default="migrate")
    p.add_argument(
        "--to-database",
        metavar="BLOCK",
        help="a SQLite server only: the empty PostgreSQL database (a saved Letta Database "
        "block; default LETTA_OPS_MOVE_TO_URI) it moves into before the migration",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan; change nothing (default: upgrade, after a confirmation unless --yes)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="run the upgrade on a restored copy (scratch database, free loopback port) and "
        "report the measured downtime; the server is never touched",
    )
    p.add_argument(
        "--from-set",
        metavar="SET",
        help="with --rehearse: the verified set to copy (default: take a backup first)",
    )
    p.add_argument(
        "--approval",
        action="store_true",
        help="pause the Prefect run before the first destructive step until approved in the UI",
    )
    p.set_defaults(func=cmd_upgrade)
