"""``upgrade --to X`` of a SQLite server: the move to PostgreSQL first, then the migration
there; one run, one undo.

Why: Letta 0.12+ no longer serve SQLite (they connect to ``localhost:5432`` and exit), so a
SQLite server can only reach such a version through PostgreSQL. Given the database to use (the
move's own ``--to-database BLOCK`` or ``LETTA_OPS_MOVE_TO_URI``), the upgrade runs the move's
steps (:mod:`letta_ops.flows.steps.move_steps`: schema at the running version, every row,
counts of both sides, sequences) and then the upgrade's migrate steps
(:mod:`letta_ops.flows.steps.upgrade_steps`) on PostgreSQL, after the SQLite safety set.

The SQLite file is only read. So the undo of the whole run, wherever it fails after the stop,
is the move's: empty the target again and start the old version on the unchanged file. A
successful run leaves the server on PostgreSQL; letta-ops cannot change the operator's
environment, so the report says what to change in the profile.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger

from ...blocks.letta_database import LettaDatabase
from ...blocks.server_profile import ServerProfile, open_backup_store
from ...tasks.errors import database_error_message
from ...tasks.letta.api import LettaClient
from ...tasks.letta.rebuild_names import plan_rebuild_names
from ...tasks.letta.server_tls import require_server_can_use_tls
from ...tasks.letta.versions import ALEMBIC_HEADS, parse_server_version
from ...tasks.move.move_plan import MovePlan
from ...tasks.move.row_copy import DEFAULT_BATCH_ROWS
from ...tasks.move.sqlite_source import file_checksum
from ...tasks.postgres.letta_inventory import compare_by_id
from ...tasks.postgres.privileges import probe_privileges
from ...tasks.postgres.sequence_repair import repair_sequences_task
from ...tasks.runs.audit_record import counts_summary, server_counts
from ...tasks.runs.context import publish_report
from ...tasks.runs.phase_timings import PhaseClock
from ...tasks.sets.catalog import load_manifest
from ...tasks.sets.manifest import set_prefix
from ...tasks.sqlite.database import FIRST_VERSION_WITHOUT_SQLITE, SqliteDatabase, serves_sqlite
from ..reports.downtime_window import DowntimeWatch
from ..reports.upgrade import (
    Strategy,
    UpgradePlan,
    UpgradeReport,
    render_upgrade_markdown,
    rollback_outcome,
)
from .destructive_run import destructive_section
from .move_steps import (
    COPY_STEP,
    TARGET_VARIABLE,
    build_schema,
    copy_rows,
    move_report,
    plan_move,
    put_back_on_sqlite,
    require_unchanged,
    resolve_target,
    schema_step,
)
from .server_steps import start_server_step, stop_server_step, undoable
from .upgrade_steps import (
    UpgradeFailed,
    UpgradeRefused,
    UpgradeState,
    inventory_step,
    list_agents_step,
    migrate_step,
    per_agent_verification,
    planned_upgrade,
)

#: What a plan expects a migrate of the moved database to take beside the move itself.
MIGRATE_SECONDS = 75


@dataclass
class SqliteUpgradePlan:
    """The pre-flight's result: the upgrade's plan and the move's, and what the undo proves."""

    sqlite: SqliteDatabase
    target: LettaDatabase
    plan: UpgradePlan
    move: MovePlan
    agents: dict[str, str]  # id -> name, as the server listed them before the run


def _target_version(profile: ServerProfile, to_version: str, strategy: Strategy) -> str:
    """The refusals that need no database: a version that still serves SQLite, a rebuild."""
    target = parse_server_version(to_version)
    if serves_sqlite(str(target)):
        raise UpgradeRefused(
            f"{profile.name} keeps its data in SQLite and Letta {target} still serves SQLite; "
            f"letta-ops upgrades a SQLite server only past it ({FIRST_VERSION_WITHOUT_SQLITE} "
            "or later), moving it to PostgreSQL first."
        )
    if strategy != "migrate":
        raise UpgradeRefused(
            f"{profile.name} keeps its data in SQLite: its upgrade moves every row to "
            "PostgreSQL, then migrates there (lossless); drop --strategy rebuild."
        )
    return str(target)


def plan_sqlite_upgrade(
    profile: ServerProfile, to_version: str, strategy: Strategy, target_database: str | None
) -> SqliteUpgradePlan:
    """Pre-flight: the versions, the target (empty, pgvector), the move's plan, disk room for
    the safety copy, both versions installed. Nothing is stopped or written."""
    assert profile.sqlite is not None
    target_version = _target_version(profile, to_version, strategy)
    target = resolve_target(
        target_database,
        why=f"to move {profile.name} into first (it keeps its data in SQLite, which Letta "
        f"{target_version} no longer serves)",
    )
    with LettaClient(profile.server) as client:
        current = str(parse_server_version(client.health()["version"]))
        agents = {a["id"]: a["name"] for a in client.list_agents()}
    if parse_server_version(target_version) <= parse_server_version(current):
        raise UpgradeRefused(
            f"{profile.name} runs Letta {current}; {target_version} is not newer (a downgrade "
            "is a rollback: use 'letta-ops rollback')."
        )
    require_server_can_use_tls(target, target_version)
    move = plan_move(profile.sqlite.path, target, profile.runtime)
    size = profile.sqlite.path.stat().st_size
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < size * 2:
        raise UpgradeRefused(
            f"Only {free} bytes are free in {tempfile.gettempdir()} for a SQLite file of {size} "
            "bytes (its safety copy needs about twice that); free some space first."
        )
    privileges = probe_privileges(target)
    # The move builds the schema at the running version, the undo starts it again.
    profile.runtime.prepare([target_version, current], log=get_run_logger().info)
    names = plan_rebuild_names(
        [{"id": i, "name": n} for i, n in agents.items()], current, target_version, "migrate"
    )
    copied = len(move.copied())
    plan = UpgradePlan(
        server=profile.name,
        base_url=profile.server.base_url,
        from_version=current,
        to_version=target_version,
        strategy="migrate",
        runtime=profile.runtime.describe(),
        pg_tools="none: the move copies with asyncpg's binary COPY; alembic through the runtime",
        alembic_revision=None,
        # The undo empties the target in place, then starts Letta on the unread file again.
        reset_mode="in-place",
        database_role=privileges.role,
        postgres_major=privileges.server_major,
        agents=len(agents),
        database_bytes=size,
        free_bytes=free,
        name_rule=names.rule.name,
        renames=names.final,
        steps=[
            "backup (SQLite online copy, verified, pinned)",
            "stop server",
            f"move: Letta {current}'s schema in {target.redacted_uri()} (its alembic)",
            f"move: copy {move.rows} rows of {copied} tables, compare every table's and "
            "agent's counts, sequences past their maximum",
            f"alembic upgrade to {target_version}",
            "repair sequences",
            f"start {target_version} on PostgreSQL",
            "verify agents by id and counts; the SQLite file proven unchanged",
        ],
        rehearsal=None,
        expected_downtime_seconds=round(move.expected_seconds + MIGRATE_SECONDS),
        expected_downtime_source="a rough estimate: the move's expected time (the bench's "
        f"rate) and {MIGRATE_SECONDS} s for the migration; no rehearsal of a move exists",
        lossy=False,
    )
    return SqliteUpgradePlan(profile.sqlite, target, plan, move, agents)


def refuse_move_target_on_postgres(profile: ServerProfile, target_database: str | None) -> None:
    """``--to-database`` names where a SQLite server moves; a PostgreSQL server's upgrade
    migrates its own database, so the option would be ignored: refuse it instead."""
    if target_database and profile.sqlite is None:
        raise UpgradeRefused(
            f"--to-database names where a SQLite server moves, and {profile.name} already runs "
            "on PostgreSQL (its upgrade migrates its own database): drop --to-database."
        )


def profile_change(
    profile: ServerProfile, target: LettaDatabase, target_database: str | None
) -> list[str]:
    """What the operator must change for the next runs (their environment is theirs)."""
    where = (
        f"the URI saved in the Letta Database block {target_database!r}"
        if target_database
        else f"the URI in {TARGET_VARIABLE}"
    )
    return [
        "unset LETTA_OPS_SQLITE_DB (the SQLite file is left as it was, no longer used)",
        f"set LETTA_PG_URI to {target.redacted_uri()} ({where}, password included), or save a "
        f"Letta Database block named {profile.name!r} with it",
    ]


def back_on_sqlite(
    profile: ServerProfile, ahead: SqliteUpgradePlan, before: str | None, label: str
) -> dict[str, Any]:
    """The undo of the whole run: the move's put-back (target emptied, the old version on the
    unchanged file), then the server's version and agents proven. Never raises."""
    started = time.monotonic()
    try:
        if before is None:  # stopped, but not yet read: nothing of the move happened
            before = file_checksum(ahead.sqlite.path)
        emptied = put_back_on_sqlite(
            profile, ahead.plan.from_version, ahead.sqlite, ahead.target, before
        )
        with LettaClient(profile.server) as client:
            version = client.health()["version"]
            agents = {a["id"]: a["name"] for a in client.list_agents()}
        result: dict[str, Any] = {
            # A target left holding the move's objects keeps the run open for ``recover``.
            "ok": emptied and version == ahead.plan.from_version and agents == ahead.agents,
            "version": version,
            "agents": len(agents),
            "agents_equal": agents == ahead.agents,
            "count_differences": [],
            "set": label,
        }
        if not emptied:
            result["error"] = (
                f"Letta {version} is back on SQLite, but the target still holds the move's "
                "objects; `letta-ops recover` empties it"
            )
    except Exception as exc:  # reported, not raised: the caller says what it means
        get_run_logger().exception("putting %s back on SQLite failed", profile.name)
        result = {"ok": False, "error": database_error_message(exc), "set": label}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def upgrade_sqlite_server(
    profile: ServerProfile,
    to_version: str,
    strategy: Strategy,
    *,
    target_database: str | None,
    store: str | None,
    server: str | None,
    dry_run: bool,
    audit: Any,
    clock: PhaseClock,
    safety_backup: Callable[[], Any],
    approval: bool = False,
    lock_timeout_seconds: float = 0,
    start_timeout_seconds: float = 240,
    require_rehearsal: bool = False,
) -> UpgradeReport:
    """The whole upgrade of a SQLite server (see the module docstring); ``safety_backup``
    takes the pinned pre-upgrade set (the backup flow: it reads the same profile).
    ``require_rehearsal`` (the deployment's default) refuses: no rehearsal of a move exists."""
    logger = get_run_logger()
    if require_rehearsal and not dry_run:
        audit.update(outcome="refused")
        raise UpgradeRefused(
            f"{profile.name} keeps its data in SQLite and a move to PostgreSQL cannot be "
            "rehearsed on a copy yet, so this run's require_rehearsal cannot be met; check the "
            "plan with --dry-run and run the upgrade with require_rehearsal off."
        )
    ahead = plan_sqlite_upgrade(profile, to_version, strategy, target_database)
    plan, target, sqlite = ahead.plan, ahead.target, ahead.sqlite
    audit.update(versions_from=plan.from_version, versions_to=plan.to_version, strategy=strategy)
    audit.update(moved_to_postgres={"target": target.redacted_uri(), "rows": ahead.move.rows})
    report = UpgradeReport(plan=plan, dry_run=dry_run, outcome="planned")
    report.move = move_report(profile, plan.from_version, sqlite, target, ahead.move, True, clock)
    if dry_run:
        return planned_upgrade(report, clock, audit, profile.name)
    pg = ServerProfile(profile.server, target, profile.runtime)
    with destructive_section(
        "upgrade",
        profile.name,
        audit,
        report=report,
        approval=approval,
        lock_timeout_seconds=lock_timeout_seconds,
        phase=clock.lapping,
    ):
        clock.lap("backup")
        backup_set = safety_backup().set
        object_store = open_backup_store(store, server)
        audit.update(backup_set=backup_set, store=object_store)
        manifest = load_manifest(object_store, *backup_set.split("/"))
        state = UpgradeState(
            profile=profile,
            store=object_store,
            manifest=manifest,
            old_version=plan.from_version,
            before_agents={},
            clock=clock,
        )
        report.backup_set = backup_set
        report.started_at = datetime.now(UTC)
        state.journal = audit.journal(object_store, set_prefix(manifest.server, manifest.set_id))
        state.journal.begin(
            backup_set=backup_set,
            from_version=plan.from_version,
            to_version=plan.to_version,
            strategy="migrate",
            reset_mode=plan.reset_mode,
            target_revision=ALEMBIC_HEADS.get(plan.to_version),
            moved_to=target.redacted_uri(),
            target_database=target_database,
        )
        checksum: dict[str, str] = {}

        def undo() -> None:
            clock.lap("undo")
            state.journal.enter("undo: back on SQLite")
            state.rollback = back_on_sqlite(profile, ahead, checksum.get("before"), backup_set)

        try:
            with undoable(state, undo):
                state.enter("stop server")
                watch = DowntimeWatch()
                stop_server_step(profile)
                stopped = time.monotonic()
                checksum["before"] = file_checksum(sqlite.path)
                state.enter(schema_step(plan.from_version), sqlite_sha256=checksum["before"])
                build_schema(profile.runtime, plan.from_version, target)
                state.enter(COPY_STEP)
                copied, moved = copy_rows(sqlite.path, target, ahead.move, DEFAULT_BATCH_ROWS)
                state.before_agents = inventory_step(pg)  # proven equal to SQLite's by the copy
                before = counts_summary(copied.sqlite_counts, state.before_agents)
                audit.update(counts_before=before)
                state.enter(f"alembic upgrade to {plan.to_version}")
                migrate_step(pg, plan.to_version)
                state.enter("repair sequences")
                sequences = repair_sequences_task(target)
                state.enter(f"start {plan.to_version}")
                start_server_step(pg, plan.to_version, start_timeout_seconds)
                watch.serving()
                state.enter("verify")
                after_api = list_agents_step(pg)
                after = inventory_step(pg)
                problems = compare_by_id(state.before_agents, after)
                if after_api != ahead.agents:
                    problems.append({"problem": "agents listed by the API differ from before"})
                if problems:
                    raise UpgradeFailed(f"verification after the move and migrate: {problems}")
                after_sha = require_unchanged(sqlite.path, checksum["before"])
        except Exception as exc:
            cause = f"at step {state.step}: {database_error_message(exc)}"
            rolled = state.rollback
            report.outcome = "failed, rolled back" if (rolled or {}).get("ok") else "failed"
            report.error, report.rollback = cause, rolled
            clock.stop()
            report.phases = clock.timings()
            publish_report(profile.name, "upgrade", render_upgrade_markdown(report))
            if rolled is None or rolled.get("ok"):
                state.journal.finish("failed, rolled back" if rolled else "failed, unchanged")
            audit.update(rollback_outcome=rollback_outcome(rolled))
            raise UpgradeFailed(
                f"Upgrade of {profile.name} from SQLite to {plan.to_version} on PostgreSQL "
                f"failed ({cause}); "
                + (
                    "nothing destructive had happened"
                    if rolled is None
                    else f"the server is back on SQLite at Letta {plan.from_version}, its file "
                    "unchanged"
                    if rolled.get("ok")
                    else "putting it back on SQLite FAILED "
                    f"({rolled.get('error') or 'agents differ'}): once the cause is fixed run "
                    f"'letta-ops rollback --to {backup_set}'"
                )
            ) from exc
    clock.stop()
    state.journal.finish("succeeded")
    report.phases = clock.timings()
    report.move = move_report(
        profile,
        plan.from_version,
        sqlite,
        target,
        ahead.move,
        False,
        PhaseClock(),
        copied,
        sequences_moved=moved,
        sqlite_sha256_before=checksum["before"],
        sqlite_sha256_after=after_sha,
    )
    report.downtime_seconds = round(time.monotonic() - stopped, 1)
    report.downtime_window = watch.window()
    report.sequences = sequences
    report.agents_after = len(after_api)
    report.verification = per_agent_verification(state.before_agents, after, {})
    report.profile_change = profile_change(profile, target, target_database)
    report.outcome = "succeeded"
    report.finished_at = datetime.now(UTC)
    audit.update(counts_after=server_counts(target), downtime_seconds=report.downtime_seconds)
    audit.update(now_on="postgresql", profile_change=report.profile_change)
    publish_report(profile.name, "upgrade", render_upgrade_markdown(report))
    logger.info("moved %s to PostgreSQL and upgraded it to %s", profile.name, plan.to_version)
    return report
