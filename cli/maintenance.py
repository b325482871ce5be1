"""``letta-ops sync-tools``, ``cleanup-sources``, ``repair-sequences``, ``rename-agents`` and
``doctor``.

One rule with two defaults, each said in the command's help: what deletes or detaches
(``cleanup-sources``, ``rename-agents``, ``sync-tools --mode exact``) only plans unless given
``--execute``; what only adds or repairs (``sync-tools --mode additive``, ``repair-sequences``)
runs for real unless given ``--dry-run``. Every one of them accepts ``--dry-run``. Every command
prints a table (or ``--json``) and leaves a report artifact on its Prefect flow run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_FAILED, EXIT_NEEDS_ACTION, EXIT_OK
from .options import lock_options, lock_wait, positive, store_options
from .output import emit, progress, render_table

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.cleanup_sources import SourceCleanupReport
    from ..flows.doctor import DoctorReport
    from ..flows.rename_agents import RenameReport
    from ..flows.repair_sequences import SequenceRepairReport
    from ..flows.sync_tools import ToolSyncReport

# --------------------------------------------------------------------------- sync-tools


def _render_sync(report: ToolSyncReport) -> str:
    rows = [
        {
            "agent": a.agent_name,
            "id": a.agent_id,
            "attach" if report.dry_run else "attached": ", ".join(a.attached),
            "detach" if report.dry_run else "detached": ", ".join(a.detached),
            "unchanged": a.unchanged,
            "error": a.error or "",
        }
        for a in report.agents
        if a.attached or a.detached or a.error
    ]
    verbs = ("attach", "detach") if report.dry_run else ("attached", "detached")
    head = (
        "plan (nothing changed; "
        + ("add --execute to detach)" if report.mode == "exact" else "drop --dry-run)")
        if report.dry_run
        else "synced"
    )
    return (
        render_table(rows, ["agent", "id", *verbs, "unchanged", "error"])
        + f"\n{head}: control {report.control_agent.name!r} "
        f"({len(report.control_tools)} tools), {report.targets} target(s), "
        f"{verbs[0]} {report.attached}, {verbs[1]} {report.detached}, "
        f"already in line {report.unchanged_agents}, errors {report.errors}"
    )


def cmd_sync_tools(args: argparse.Namespace) -> int:
    from ..flows.sync_tools import ToolSyncFailed, effective_dry_run, sync_tools

    dry_run = True if args.dry_run else (False if args.execute else None)
    if effective_dry_run(args.mode, dry_run):
        progress(f"planning a {args.mode} tool sync; nothing will change")
    try:
        report = sync_tools(
            control_agent=args.control,
            tags=args.tag,
            name_pattern=args.name,
            agent_ids=args.agent_id,
            match_all_tags=args.match_all_tags,
            mode=args.mode,
            dry_run=dry_run,
            concurrency=args.concurrency,
            server=args.server,
        )
    except ToolSyncFailed as exc:
        emit(exc.report, args.json, render=_render_sync)
        progress(str(exc))
        return EXIT_FAILED
    emit(report, args.json, render=_render_sync)
    return EXIT_OK


# --------------------------------------------------------------------------- cleanup-sources


def _render_cleanup(report: SourceCleanupReport) -> str:
    text = render_table(
        [item.model_dump(mode="json") for item in report.remove],
        ["name", "id", "category", "reason", "outcome"],
    )
    for kept in report.kept:
        text += f"\nkept {kept.name!r} ({kept.id}): {kept.reason}"
    if report.executed:
        text += f"\nremoved {report.removed}, left {report.left}"
        if report.backup_set:
            text += f" (backup before the SQL step: {report.backup_set})"
    else:
        hint = "--execute" if report.sql else "--execute (and --sql for phantoms)"
        text += (
            f"\nplan (nothing deleted; add {hint}): "
            f"{report.orphans} orphan(s), {report.duplicates} duplicate(s), "
            f"{report.phantoms} phantom(s) of {report.folders_total} folder(s)"
        )
    return text


def cmd_cleanup_sources(args: argparse.Namespace) -> int:
    from ..flows.cleanup_sources import CleanupFailed, cleanup_sources

    try:
        report = cleanup_sources(
            server=args.server,
            store=args.store,
            execute=args.execute,
            sql=args.sql,
            **lock_wait(args),
        )
    except CleanupFailed as exc:
        if exc.report is not None:
            emit(exc.report, args.json, render=_render_cleanup)
        progress(str(exc))
        return EXIT_FAILED
    emit(report, args.json, render=_render_cleanup)
    return EXIT_OK


# --------------------------------------------------------------------------- repair-sequences


def _render_repair(report: SequenceRepairReport) -> str:
    # The changes differ by action: a missing attribute is an empty cell.
    rows = [
        {
            "action": c.action,
            "sequence": getattr(c, "sequence", ""),
            "column": f"{c.table}.{c.column}" if getattr(c, "table", None) else "",
            "from": getattr(c, "from_", ""),
            "to": getattr(c, "to", ""),
        }
        for c in report.changes
    ]
    verb = "would change" if report.dry_run else "changed"
    text = render_table(rows, ["action", "sequence", "column", "from", "to"])
    text += (
        f"\n{report.columns} sequence column(s) checked in schema {report.schema_}; "
        f"{verb} {len(rows)}; problems before {len(report.problems_before)}, "
        f"after {len(report.problems_after)}"
    )
    return text


def cmd_repair_sequences(args: argparse.Namespace) -> int:
    from ..flows.repair_sequences import repair_sequences

    report = repair_sequences(server=args.server, dry_run=args.dry_run, **lock_wait(args))
    emit(report, args.json, render=_render_repair)
    return EXIT_OK


# --------------------------------------------------------------------------- rename-agents


def _render_renames(report: RenameReport) -> str:
    if not report.renames:
        return report.message or "nothing to do"
    head = "renamed" if report.executed else "plan only: rerun with --execute to rename"
    rows = render_table(
        [r.model_dump(mode="json") for r in report.renames], ["agent", "from", "to"]
    )
    tail = f"\nnames before are in {report.backup_set}" if report.backup_set else ""
    return f"{rows}\n{len(report.renames)} agent(s), Letta {report.version}: {head}{tail}"


def cmd_rename_agents(args: argparse.Namespace) -> int:
    from ..flows.rename_agents import rename_agents

    report = rename_agents(
        server=args.server, store=args.store, execute=args.execute, **lock_wait(args)
    )
    emit(report, args.json, render=_render_renames)
    return EXIT_OK


# --------------------------------------------------------------------------- doctor


def _render_doctor(report: DoctorReport) -> str:
    rows = [
        {
            "check": f.check + (" (ignored)" if f.check in report.ignored else ""),
            "status": f.status.upper() if f.status == "action" else f.status,
            "finding": f.detail,
            "fix": f.fix or "",
        }
        for f in report.findings
    ]
    verdict = "NEEDS ACTION" if report.needs_action else "all well"
    return (
        render_table(rows, ["check", "status", "finding", "fix"])
        + f"\n{report.server} ({report.base_url}), Letta {report.version or '?'}: "
        + verdict
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..flows.doctor import doctor

    report = doctor(
        server=args.server,
        store=args.store,
        compose_file=str(args.compose_file) if args.compose_file else None,
        compose_service=args.compose_service,
        max_backup_age_hours=args.max_backup_age_hours,
        ignore=args.ignore,
    )
    emit(report, args.json, render=_render_doctor)
    return EXIT_NEEDS_ACTION if report.needs_action else EXIT_OK


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this area's sub-commands on the ``letta-ops`` parser."""
    from ..tasks.doctor.check_names import CHECK_NAMES

    store = store_options()
    lock = lock_options(None)

    p = sub.add_parser(
        "sync-tools",
        parents=[common],
        help="give agents the tools of a control agent (additive or exact)",
        description="Attach the control agent's tools to every target agent; --mode exact "
        "also detaches tools the control agent does not have. Targets: --tag, --name "
        "and --agent-id narrow each other; the control agent is never a target. Additive "
        "runs for real unless --dry-run; exact only plans unless --execute. Exit 1 if an "
        "agent could not be synced.",
    )
    p.add_argument("--control", required=True, metavar="AGENT", help="control agent id or name")
    p.add_argument("--tag", action="append", metavar="TAG", help="target agents with this tag")
    p.add_argument(
        "--match-all-tags", action="store_true", help="targets need every --tag (default: any)"
    )
    p.add_argument("--name", metavar="PATTERN", help="target agents whose name matches (glob)")
    p.add_argument("--agent-id", action="append", metavar="ID", help="target this agent id")
    p.add_argument("--mode", choices=("additive", "exact"), default="additive")
    p.add_argument("--concurrency", type=positive, default=4, help="agents in flight (4)")
    run = p.add_mutually_exclusive_group()
    run.add_argument(
        "--dry-run", action="store_true", help="only show the plan (the default for exact)"
    )
    run.add_argument(
        "--execute",
        action="store_true",
        help="really change (the default for additive; needed for exact)",
    )
    p.set_defaults(func=cmd_sync_tools)

    p = sub.add_parser(
        "cleanup-sources",
        parents=[common, store, lock],
        help="remove orphan, duplicate and phantom folders (plan only by default)",
        description="List folders (sources) attached to no agent, suffixed copies of "
        "another folder, and phantoms the API lists but cannot delete. Folders attached to "
        "an agent are never removed. Deletes only with --execute; phantoms only with --sql, "
        "after a verified backup into the store.",
    )
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="only show the plan (the default)")
    run.add_argument("--execute", action="store_true", help="really delete")
    p.add_argument(
        "--sql",
        action="store_true",
        help="also remove phantom rows in the database, after a verified backup",
    )
    p.set_defaults(func=cmd_cleanup_sources)

    p = sub.add_parser(
        "repair-sequences",
        parents=[common, lock],
        help="restore messages.sequence_id's default and move lagging sequences",
        description="Create message_seq_id if missing, set messages.sequence_id's default "
        "back, and move every sequence past its column's maximum, in one transaction. "
        "Idempotent; --dry-run shows the changes without making them.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what would change (default: repair)",
    )
    p.set_defaults(func=cmd_repair_sequences)

    p = sub.add_parser(
        "rename-agents",
        parents=[common, store, lock],
        help="rename agents the running version refuses to export (plan only by default)",
        description="Names set through PATCH (e.g. 'AI/ML Expert') pass no validation, and the "
        "server then fails to export those agents, so backups have no agent file for them. "
        "--sanitize plans a valid, unique name for each under the running version's rule; "
        "--execute takes a verified pre-rename backup and renames them; the mapping goes into "
        "the audit history.",
    )
    p.add_argument(
        "--sanitize", action="store_true", required=True, help="names valid for the running version"
    )
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="only show the plan (the default)")
    run.add_argument("--execute", action="store_true", help="back up, then rename")
    p.set_defaults(func=cmd_rename_agents)

    p = sub.add_parser(
        "doctor",
        parents=[common, store],
        help="check everything that has broken Letta servers before (exit 3: needs action)",
        description="Health and version, alembic head, pgvector, LETTA_PG_URI, a writable "
        "HOME, messages.sequence_id, LETTA_ENCRYPTION_KEY, the compose pin, disk for a dump, "
        "the newest verified backup. Changes nothing. Exit 3 when something needs action.",
    )
    p.add_argument("--compose-file", metavar="PATH", help="compose file to check for a pin")
    p.add_argument(
        "--compose-service",
        default="letta_server",
        help="the Letta service in it (letta_server, as in Letta's own compose file)",
    )
    p.add_argument(
        "--max-backup-age-hours",
        type=float,
        default=26.0,
        help="oldest acceptable verified backup (26)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        choices=CHECK_NAMES,
        metavar="CHECK",
        help=f"accept a finding (repeatable): {', '.join(CHECK_NAMES)}",
    )
    p.set_defaults(func=cmd_doctor)
