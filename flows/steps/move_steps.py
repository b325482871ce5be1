"""The move-to-postgres steps, one Prefect task each: plan, build the schema, copy, put back.

Why steps of their own: the move is its own command and the first half of ``upgrade --to`` a
version that no longer serves SQLite; both run these. What touches SQLite and PostgreSQL is in
:mod:`letta_ops.tasks.move`; the schema comes from the runtime (the same version's alembic).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ...blocks.letta_database import LettaDatabase
from ...blocks.letta_runtime import LettaRuntime
from ...tasks.errors import Failed, Refused
from ...tasks.move.move_plan import MovePlan, source_plan
from ...tasks.move.row_copy import CopyResult, copy_all_rows, refuse_unless_empty
from ...tasks.move.sqlite_source import file_checksum, open_read_only
from ...tasks.postgres.letta_schema import reset_schema_in_place
from ...tasks.postgres.sequence_repair import repair_sequences
from ...tasks.runs import timeouts as run_timeouts


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


def empty_target_again(target: LettaDatabase) -> None:
    """After a failed move: drop what the move created, so the database is empty again (it
    was proven empty before)."""
    reset_schema_in_place(target)


def require_unchanged(sqlite_file: Path, before: str) -> str:
    after = file_checksum(sqlite_file)
    if after != before:
        raise SqliteFileChanged(
            f"{sqlite_file} changed during the move (sha256 {before[:12]} -> {after[:12]}); "
            "something else writes to it: stop it, then move again."
        )
    return after
