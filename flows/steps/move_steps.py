"""The move-to-postgres steps, one Prefect task each: plan, build the schema, copy, put back;
the target's resolution and the move's report.

Why steps of their own: the move is its own command and the first half of ``upgrade --to`` a
version that no longer serves SQLite; both run these. What touches SQLite and PostgreSQL is in
:mod:`letta_ops.tasks.move`; the schema comes from the runtime (the same version's alembic).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ...blocks.letta_database import LettaDatabase
from ...blocks.letta_runtime import LettaRuntime
from ...blocks.server_profile import ServerProfile
from ...tasks.errors import Failed, Refused
from ...tasks.move.move_plan import MovePlan, source_plan
from ...tasks.move.row_copy import CopyResult, copy_all_rows, refuse_unless_empty
from ...tasks.move.sqlite_source import file_checksum, open_read_only
from ...tasks.postgres.letta_schema import reset_schema_in_place
from ...tasks.postgres.sequence_repair import repair_sequences
from ...tasks.runs import timeouts as run_timeouts
from ...tasks.runs.phase_timings import PhaseClock
from ...tasks.sqlite.database import SqliteDatabase
from ..reports.move import MoveAgent, MoveReport, MoveTable

#: The variable naming the PostgreSQL database to move into (never an argument: it holds the
#: password).
TARGET_VARIABLE = "LETTA_OPS_MOVE_TO_URI"

#: The journal's name of the copy step (the move's and the one-command upgrade's).
COPY_STEP = "move: copy rows and compare counts"


def schema_step(version: str) -> str:
    """The journal's name of the step in which alembic builds the schema in the target."""
    return f"move: Letta {version}'s schema in PostgreSQL"


def resolve_target(target_database: str | None, why: str = "to move into") -> LettaDatabase:
    """The saved Letta Database block of that name, else ``LETTA_OPS_MOVE_TO_URI``; ``why``
    finishes the refusal's first clause when neither is given."""
    if target_database:
        return LettaDatabase.load(target_database)
    uri = os.environ.get(TARGET_VARIABLE, "").strip()
    if not uri:
        raise Refused(
            f"Name the PostgreSQL database {why}: --to-database BLOCK (a saved Letta "
            f"Database block) or {TARGET_VARIABLE}=postgresql://USER:PASSWORD@HOST:PORT/DB."
        )
    return LettaDatabase.from_env({"LETTA_PG_URI": uri})


class SqliteFileChanged(Failed):
    """The SQLite file's checksum changed during the move (something else wrote to it)."""


@task(name="move-plan", cache_policy=NO_CACHE)
def plan_move(sqlite_file: Path, target: LettaDatabase, runtime: LettaRuntime) -> MovePlan:
    """The plan from the SQLite side, once the target is proven empty (with pgvector) and the
    runtime proven able to build the schema there; nothing is written."""
    if runtime.migrates_on_start:
        raise Refused(
            "This runtime's server migrates its own database when it starts; the move needs "
            "letta-ops to build the schema first: use the process runtime for the move."
        )
    runtime.require_drivable()
    refuse_unless_empty(target)
    with open_read_only(sqlite_file) as source:
        return source_plan(source)


@task(name="move-build-schema", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.MIGRATE)
def build_schema(runtime: LettaRuntime, version: str, target: LettaDatabase) -> None:
    """The same Letta version's alembic builds its schema in the empty database."""
    runtime.migrate(version, target, log=get_run_logger().info)


@task(name="move-copy-rows", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.MIGRATE)
def copy_rows(
    sqlite_file: Path, target: LettaDatabase, plan: MovePlan, batch_rows: int
) -> tuple[CopyResult, int]:
    """Every row, then the sequences past their maximum; returns the copy and how many
    sequences moved."""
    result = copy_all_rows(sqlite_file, target, plan, batch_rows, log=get_run_logger().info)
    repaired = repair_sequences(target)
    return result, len([c for c in repaired.changes if c.get("action") == "setval"])


def require_unchanged(sqlite_file: Path, before: str) -> str:
    after = file_checksum(sqlite_file)
    if after != before:
        raise SqliteFileChanged(
            f"{sqlite_file} changed during the move (sha256 {before[:12]} -> {after[:12]}); "
            "something else writes to it: stop it, then move again."
        )
    return after


def move_report(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    plan: MovePlan,
    dry_run: bool,
    clock: PhaseClock,
    copied: CopyResult | None = None,
    **extra,
) -> MoveReport:
    """The move's report: the plan, and once copied the counts of both sides."""
    seconds = copied.seconds_by_table if copied else {}
    agents = []
    if copied:
        for agent_id in sorted(copied.sqlite_agents.keys() | copied.postgres_agents.keys()):
            s = copied.sqlite_agents.get(agent_id, {})
            p = copied.postgres_agents.get(agent_id, {})
            agents.append(
                MoveAgent(
                    agent_id=agent_id,
                    sqlite_messages=s.get("messages", 0),
                    postgres_messages=p.get("messages", 0),
                    sqlite_blocks=s.get("blocks", 0),
                    postgres_blocks=p.get("blocks", 0),
                )
            )
    return MoveReport(
        server=profile.name,
        version=version,
        sqlite_file=str(sqlite.path),
        target=target.redacted_uri(),
        dry_run=dry_run,
        tables=[
            MoveTable(
                name=t.name,
                action=t.action,
                reason=t.reason,
                rows=t.rows,
                bytes=t.bytes,
                sqlite_count=copied.sqlite_counts.get(t.name) if copied else None,
                postgres_count=copied.postgres_counts.get(t.name) if copied else None,
                seconds=seconds.get(t.name),
            )
            for t in plan.tables
        ],
        rows=plan.rows,
        bytes=plan.bytes,
        expected_seconds=plan.expected_seconds,
        copy_order=copied.order if copied else [],
        deferred_keys=copied.deferred_keys if copied else [],
        agents=agents,
        phases=clock.timings(),
        now_on="sqlite" if dry_run else "postgresql",
        **extra,
    )


def journaled_target(moved_to: str, target_database: str | None, run_id: str) -> LettaDatabase:
    """The database an interrupted move wrote into, for ``recover`` to empty: the block the run
    named, else ``LETTA_OPS_MOVE_TO_URI`` (the journal holds neither the URI nor its password),
    proven to be the one the journal names (``moved_to``, redacted) before anything is touched."""
    target = resolve_target(
        target_database, why=f"that run {run_id} moved into ({moved_to}), so recover can empty it"
    )
    if target.redacted_uri() != moved_to:
        raise Refused(
            f"Run {run_id} moved into {moved_to}, but the database given now is "
            f"{target.redacted_uri()}; point LETTA_OPS_MOVE_TO_URI (or the run's Letta Database "
            "block) at the database that run moved into, then recover again."
        )
    return target


def _back_on_sqlite(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    before: str | None,
    timeout: float | None = None,
    tolerate_full_target: bool = False,
) -> tuple[int | None, str, int]:
    """Stop the server (it may be up on PostgreSQL), drop what the move created in the target
    (Letta's objects: the target held none before, the move proved it), prove the SQLite file
    as the move found it (``before``; None: the move never read it), start ``version`` on it.
    Returns (objects dropped, None if the target could not be emptied; the file's sha256; the
    new server's pid). ``tolerate_full_target``: a target that cannot be emptied is logged and
    the server goes back on SQLite all the same (the caller keeps the journal open)."""
    logger = get_run_logger()
    profile.runtime.stop(log=logger.info)
    dropped: int | None = None
    try:
        dropped = reset_schema_in_place(target)
    except Exception as exc:
        if not tolerate_full_target:
            raise
        logger.error(
            "the target could not be emptied again (%s); `letta-ops recover` empties it", exc
        )
    sha256 = file_checksum(sqlite.path)
    if before is not None and sha256 != before:
        raise SqliteFileChanged(
            f"{sqlite.path} is not as the move found it (sha256 {before[:12]} -> "
            f"{sha256[:12]}): something else writes to it; nothing was started on it. Stop "
            "that writer, then run the command again."
        )
    record = profile.runtime.with_timeout(timeout).start(version, sqlite, log=logger.info)
    return dropped, sha256, record.pid


def undo_interrupted_move(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    before: str | None,
    timeout: float | None = None,
) -> dict:
    """``recover``'s way out of a move killed at any step (``before``: the file's sha256 once
    the server stopped, None if killed before the move read it). Unlike the in-run undo, a
    target that cannot be emptied raises: the journal stays open."""
    dropped, sha256, pid = _back_on_sqlite(profile, version, sqlite, target, before, timeout)
    return {"dropped": dropped, "sqlite_sha256": sha256, "pid": pid}


def put_back_on_sqlite(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    before: str,
) -> bool:
    """The in-run undo of a failed move: back on the (unchanged) SQLite file whatever the
    target's state. Returns whether the target was emptied: if not, the caller leaves its
    journal open, so ``recover`` empties it later."""
    dropped, _sha256, _pid = _back_on_sqlite(
        profile, version, sqlite, target, before, tolerate_full_target=True
    )
    return dropped is not None
