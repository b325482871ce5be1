"""``letta-ops rollback``, ``restore``, ``recover``, ``unlock``, ``resume`` and
``restore-agents``.

Same conventions as ``upgrade``: a destructive command shows its plan and asks before it
changes anything (``--yes`` skips the question, ``--dry-run`` only shows the plan); refusals
are one sentence and exit 2 with nothing changed; a failed operation exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK, Refused
from ..tasks.runs import temporary_server
from ..tasks.runs.confirmation import asking
from .options import (
    allow_legacy_option,
    lock_options,
    port,
    reset_options,
    store_options,
)
from .output import confirm, emit, phases_lines, render_table, with_progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.recover import RecoverReport
    from ..flows.reports.rollback import RollbackReport
    from ..flows.restore import RestoreReport
    from ..flows.restore_agents import AgentRestoreReport
    from ..tasks.runs.lock import UnlockReport

# --------------------------------------------------------------------------- rollback


def render_rollback_plan(report: RollbackReport) -> str:
    plan = report.plan
    lines = [
        f"rollback {plan.server} ({plan.base_url}): Letta {plan.from_version} -> "
        f"{plan.to_version} from set {plan.set}",
        f"set taken {plan.set_created_at.isoformat()} ({plan.set_purpose}), "
        f"{plan.objects_verified} objects verified; {plan.tables} tables, "
        f"{plan.rows} rows",
        f"agents {plan.agents_now} now -> {plan.agents_in_set} after; expected downtime "
        f"about {plan.expected_downtime_seconds} s",
        f"database: PostgreSQL {plan.postgres_major}, role {plan.database_role}, "
        f"emptied by {plan.reset_mode}",
    ]
    if plan.server_down:
        lines.append(
            f"the server is down: Letta {plan.from_version} read from the database's "
            "alembic revision; the safety backup is its pg_dump (no agent files)"
        )
    if plan.agents_not_in_set:
        lines.append(
            "not in the set (kept in the safety backup): " + ", ".join(plan.agents_not_in_set)
        )
    if plan.agents_coming_back:
        lines.append("coming back: " + ", ".join(plan.agents_coming_back))
    for name, diff in plan.runtime_file_changes.items():
        lines.append(
            f"runtime file {name} put back from the set: "
            + ("unchanged" if not diff else f"{len(diff)} diff lines against the file now")
        )
        lines += [f"  {line}" for line in diff]
    if plan.left_alone:
        lines.append("left alone (not Letta's): " + ", ".join(plan.left_alone))
    if plan.written_since_set is not None:
        from ..flows.reports.rollback import lost_rows

        lines.append(f"written since the set (lost, kept in the safety backup): {lost_rows(plan)}")
    if plan.agents_created_since_set:
        lines.append("agents created since the set: " + ", ".join(plan.agents_created_since_set))
    lines.append("steps:")
    lines += [f"  {i}. {step}" for i, step in enumerate(plan.steps, 1)]
    return "\n".join(lines)


def render_rollback(report: RollbackReport) -> str:
    text = render_rollback_plan(report) + f"\noutcome: {report.outcome}"
    if report.downtime_seconds is not None:
        proof = report.verification
        text += (
            f", downtime {report.downtime_seconds} s; now Letta {proof.version} with "
            f"{proof.agents} agents, counts equal the manifest's"
            f"\nsafety backup (undo with --to): {report.safety_set}"
        )
    return "\n".join([text, *phases_lines(report.phases)])


def cmd_rollback(args: argparse.Namespace) -> int:
    from ..flows.rollback import rollback

    common = {
        "backup_set": args.to,
        "server": args.server,
        "store": args.store,
        "reset": args.reset,
        "allow_legacy": args.allow_legacy,
    }
    if args.dry_run:
        emit(
            rollback(**common, dry_run=True),
            args.json,
            render=render_rollback_plan,
        )
        return EXIT_OK

    def ask(plan: RollbackReport) -> None:
        confirm(render_rollback_plan(plan), "Proceed with the rollback?", "roll back")

    with asking(ask) if not args.yes else contextlib.nullcontext():
        report = with_progress(
            lambda: rollback(
                **common,
                approval=args.approval,
                lock_timeout_seconds=args.wait,
                jobs=args.jobs,
            )
        )
    emit(report, args.json, render=render_rollback)
    return EXIT_OK


# --------------------------------------------------------------------------- restore


def render_restore_plan(report: RestoreReport) -> str:
    plan = report.plan
    on_sqlite = plan.engine == "sqlite"
    what = "the file" if on_sqlite else "Letta's tables there"
    replaces = (
        f"DROPS and replaces {what} ({plan.target_tables_before} tables)"
        if plan.replaces_existing
        else "an empty database"
    )
    how = "the checked copy renamed over it" if on_sqlite else f"emptied by {plan.reset_mode}"
    lines = [
        f"plan (nothing changed): restore {plan.set} (Letta {plan.letta_version}) onto "
        f"{plan.target}: {replaces}, {how}",
        f"{plan.tables} tables, {plan.rows} rows, {plan.agents_in_set} agents; "
        f"{plan.objects_verified} objects verified",
    ]
    if plan.left_alone:
        lines.append("left alone (not Letta's): " + ", ".join(plan.left_alone))
    if plan.start:
        lines.append(f"then start Letta {plan.letta_version} at {plan.base_url}")
    return "\n".join(lines)


def render_restore(report: RestoreReport) -> str:
    plan = report.plan
    lines = [
        f"restored {plan.set} (Letta {plan.letta_version}) onto {plan.target}: {report.outcome}",
        f"{plan.tables} tables, {plan.rows} rows, {plan.agents_in_set} agents; "
        "per-table counts equal the manifest's",
    ]
    if report.server:
        s = report.server
        lines.append(f"Letta {s.version} runs at {s.base_url} (pid {s.pid})")
    if report.address_with:
        env = " ".join(
            f"{k}={v}" for k, v in report.address_with.model_dump().items() if k != "LETTA_PG_URI"
        )
        lines.append(
            f"later commands find it with: {env} letta-ops runtime status "
            "(and upgrade, rollback, runtime stop; add LETTA_PG_URI for the database, "
            "password in PGPASSWORD)"
        )
    lines += phases_lines(report.phases)
    return "\n".join(lines)


def _check_database_argument(reference: str | None) -> None:
    """Refuse a password on the command line before any flow run records the parameter."""
    from ..blocks.letta_database import target_database
    from ..tasks.postgres.restore_target import is_uri

    if reference is not None and is_uri(reference):
        target_database(reference)  # RestoreTargetRefused (a Refused): exit 2


def _check_sqlite_argument(reference: str | None) -> None:
    """Refuse a --sqlite that names no file a Letta opens (or names something that is not a
    SQLite database) before any run starts."""
    from ..tasks.sqlite.restore_target import sqlite_target, target_tables

    if reference is not None:
        target_tables(sqlite_target(reference))  # SqliteTargetRefused (a Refused): exit 2


def cmd_restore(args: argparse.Namespace) -> int:
    _check_sqlite_argument(args.sqlite)
    api = temporary_server.start_if_needed()  # starts while the flow's modules import
    _check_database_argument(args.database)
    from ..flows.restore import restore

    temporary_server.wait_ready(api)
    if args.force and not args.yes and not args.dry_run:
        where = args.database or args.sqlite or "the profile's SQLite file"
        confirm(
            f"restore {args.set} onto {where}: with --force an existing database "
            "there is DROPPED and replaced by the set.",
            "Drop and replace it?",
            "restore with --force",
        )
    options = {
        "server": args.server,
        "store": args.store,
        "force": args.force,
        "start": args.start,
        "port": args.port,
        "runtime": args.runtime,
        "jobs": args.jobs,
        "lock_timeout_seconds": args.wait,
        "reset": args.reset,
        "name": args.name,
        "allow_legacy": args.allow_legacy,
        "sqlite": args.sqlite,
    }
    if args.dry_run:
        plan = restore(args.set, args.database, **options, dry_run=True)
        emit(plan, args.json, render=render_restore_plan)
        return EXIT_OK
    report = with_progress(lambda: restore(args.set, args.database, **options))
    emit(report, args.json, render=render_restore)
    return EXIT_OK


# --------------------------------------------------------------------------- restore-agents


def render_restore_agents(report: AgentRestoreReport) -> str:
    return (
        render_table(
            [row.model_dump(mode="json") for row in report.agents],
            [
                "name_in_set",
                "restored_as",
                "new_id",
                "blocks",
                "messages_restored",
                "messages_in_file",
            ],
        )
        + f"\nrestored {len(report.agents)} agent(s) from {report.set} into Letta "
        f"{report.letta_version}\nnote: {report.note}"
    )


def cmd_restore_agents(args: argparse.Namespace) -> int:
    from ..flows.restore_agents import restore_agents

    report = restore_agents(
        args.set, args.agents, server=args.server, store=args.store, as_copy=args.as_copy
    )
    emit(report, args.json, render=render_restore_agents)
    return EXIT_OK


# --------------------------------------------------------------------------- recover, unlock


def render_recover(report: RecoverReport) -> str:
    if report.outcome == "nothing to recover":
        return report.message
    plan = report.plan
    lines = [
        f"interrupted run {plan.run_id} ({plan.operation} of {report.server}) "
        f"stopped at '{plan.interrupted_at}': {report.why_dead}",
        f"decision: {plan.action}: {plan.reason}",
    ]
    if report.result:
        lines.append(f"done: {report.result.done}")
    lines.append(f"outcome: {report.outcome}")
    return "\n".join(lines)


def cmd_recover(args: argparse.Namespace) -> int:
    from ..flows.recover import recover

    report = with_progress(
        lambda: recover(
            server=args.server,
            store=args.store,
            dry_run=args.dry_run,
            lock_timeout_seconds=args.wait,
        )
    )
    emit(report, args.json, render=render_recover)
    return EXIT_OK


def render_unlock(result: UnlockReport) -> str:
    if result.would_free is not None:  # --dry-run
        verb = "would free" if result.would_free else "would not free"
        return f"plan (nothing freed): {verb} the slot of {result.server}: {result.reason}"
    if result.freed:
        return f"freed the destructive slot of {result.server}: {result.reason}"
    return f"nothing to free on {result.server}: {result.reason}"


def cmd_unlock(args: argparse.Namespace) -> int:
    from ..blocks.server_profile import load_profile
    from ..tasks.runs.lock import unlock

    # The slot is the database's (two server names for one database share it).
    profile = load_profile(args.server)
    name, database = profile.name, profile.database
    if args.dry_run:  # a look at the slot: nothing changes, so nothing to audit
        planned = unlock(name, force=args.force, dry_run=True, database=database)
        emit(planned, args.json, render=render_unlock)
        return EXIT_OK
    from ..tasks.runs.audit_record import audited_run

    with audited_run("unlock", name, {"force": args.force}) as record:
        result = unlock(name, force=args.force, database=database)
        record.update(
            outcome="succeeded" if result.freed else "nothing to do",
            **result.model_dump(mode="json", exclude={"schema_version", "would_free"}),
        )
    emit(result, args.json, render=render_unlock)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a run paused for the operator (a manual runtime's stop or start, an approval
    without input): the run checks the server itself before it goes on."""
    from uuid import UUID

    try:
        run_id = UUID(args.run)
    except ValueError:
        raise Refused(
            f"{args.run!r} is not a flow run id; copy it from the paused run's log line or page."
        ) from None
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import NotPausedError, resume_flow_run

    try:
        resume_flow_run(run_id)
    except ObjectNotFound:
        raise Refused(f"No flow run {run_id} on this Prefect server.") from None
    except NotPausedError:
        raise Refused(f"Flow run {run_id} is not paused; nothing to resume.") from None
    emit({"resumed": str(run_id)}, args.json, render=lambda r: f"resumed {r['resumed']}")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``rollback``, ``restore``, ``recover``, ``unlock``, ``resume`` and
    ``restore-agents``."""
    store = store_options()
    reset = reset_options()
    lock = lock_options(0)
    lock.add_argument(
        "--jobs", type=int, default=2, help="parallel pg_restore workers (2)", metavar="N"
    )

    p = sub.add_parser(
        "rollback",
        parents=[common, store, lock, reset],
        help="put the server back on a backup set's version and data",
        description="Verify the set (manifest, this server's, sha256 of every object, version "
        "installable), back up the current state (pinned, pre-rollback: the undo), stop, "
        "empty the database (see --reset), restore the dump, repair sequences, start the set's "
        "Letta version and prove agents and per-table counts equal the manifest's. Any failure "
        "after the stop restores the safety backup and the version that was running.",
    )
    p.add_argument(
        "--to",
        metavar="SET",
        help="SERVER/SET_ID, SET_ID or latest (default: the newest verified pre-upgrade set)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only show the plan (default: roll back, after a confirmation unless --yes)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--approval",
        action="store_true",
        help="pause before the first destructive step until approved in the Prefect UI",
    )
    allow_legacy_option(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "restore",
        parents=[common, store, lock, reset],
        help="restore a backup set onto another (empty) database or SQLite file",
        description="Restore a set onto a different database (a staging copy, a new host): a "
        "PostgreSQL set with --database, a SQLite set with --sqlite (or onto the profile's own "
        "empty SQLite file). Refuses a target that holds tables unless --force, and a target "
        "of the other engine. The password never goes on the command line: use PGPASSWORD "
        "with a URI, or a saved Letta Database block.",
    )
    p.add_argument("set", metavar="SET", help="SERVER/SET_ID, SET_ID or latest")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--database",
        metavar="URI_OR_BLOCK",
        help="postgresql://USER@HOST:PORT/DB (password in PGPASSWORD) or a saved Letta "
        "Database block name: the target of a PostgreSQL set",
    )
    target.add_argument(
        "--sqlite",
        metavar="PATH",
        help="HOME/.letta/sqlite.db (or its .letta directory): the target of a SQLite set; "
        "without --database and --sqlite, the profile's own SQLite file (empty), its server "
        "then started on the set's version",
    )
    p.add_argument(
        "--force", action="store_true", help="drop and replace a non-empty database or file"
    )
    p.add_argument("--yes", action="store_true", help="do not ask before --force drops")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only check and show the plan (default: restore; with --force after a "
        "confirmation unless --yes)",
    )
    p.add_argument("--start", action="store_true", help="start a Letta of the set's version on it")
    p.add_argument("--port", type=port, help="with --start: port on 127.0.0.1 for that server")
    p.add_argument(
        "--runtime", metavar="BLOCK", help="with --start: a saved Letta Process Runtime block"
    )
    p.add_argument(
        "--name",
        metavar="NAME",
        help="with --start: the restored server's name, which later commands use to find it "
        "(LETTA_OPS_SERVER_NAME); default 127.0.0.1-PORT, what LETTA_BASE_URL alone gives",
    )
    allow_legacy_option(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "recover",
        parents=[common, store, lock_options(30)],
        help="take the server out of an interrupted upgrade or rollback (kill -9, lost host)",
        description="Find the server's destructive runs that were interrupted (journal begun, "
        "never finished, process gone), mark them crashed, and take the one safe way out: "
        "finish forward when the database is verifiably at the target, otherwise restore "
        "the backup set taken before the run and start the version it records. Idempotent; "
        "exits 0 with one sentence when there is nothing to recover.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only show the decision (default: carry it out)"
    )
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "unlock",
        parents=[common],
        help="free the server's destructive slot when its holder is provably dead",
        description="A run killed outright keeps the slot until its lease expires (300 s). "
        "unlock frees it now when the holder's pid on this host is gone or its Prefect run is "
        "over, and refuses otherwise (--force frees it anyway). Audited.",
    )
    p.add_argument("--force", action="store_true", help="free it even if the holder may run")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only say whether it would be freed, and why (default: free it)",
    )
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser(
        "resume",
        parents=[common],
        help="resume a run paused for the operator (manual runtime steps)",
        description="With the manual runtime, an upgrade or rollback pauses at each stop and "
        "start with the exact instruction (in its log and on its page in the UI). Do it, then "
        "resume the run here or in the UI; it checks health and version before it goes on.",
    )
    p.add_argument("run", metavar="RUN", help="the paused flow run's id")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "restore-agents",
        parents=[common, store],
        help="restore agents from a set's agent files into the running server",
        description="Import agents (by id or exact name) from a backup set's agent files, "
        "named for the running version's rule; refuses if the agent or its name is live "
        "unless --as-copy. Prints each restored agent's new id.",
    )
    p.add_argument("set", metavar="SET", help="SERVER/SET_ID, SET_ID or latest")
    p.add_argument("agents", nargs="+", metavar="AGENT", help="agent id or exact name")
    p.add_argument(
        "--as-copy",
        action="store_true",
        help="restore beside the live agent as '<name> restored <set date>'",
    )
    p.set_defaults(func=cmd_restore_agents)
