"""Every row of a SQLite Letta database into the empty PostgreSQL schema the same version's
alembic built: one transaction, parents first, binary COPY fed in bounded batches, then the
counts of both sides compared.

Why one transaction: a failure at any row (a value PostgreSQL refuses, a dropped connection)
leaves the target with no rows at all, and the server is still on its untouched SQLite file.
The foreign keys inside cycles are dropped for the copy and added back before the commit, so
PostgreSQL checks every row against every key (:mod:`letta_ops.tasks.move.table_order`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Failed
from ..postgres.database import PostgresDatabase
from . import postgres_target as pg
from .move_plan import MovePlan, column_converters, source_plan
from .sqlite_source import open_read_only, per_agent_counts, row_count, stream_rows
from .table_order import copy_order
from .value_conversion import Converter

#: Rows read from SQLite per batch: bounds the memory a table of any size takes.
DEFAULT_BATCH_ROWS = 2_000


class ValueNotConvertible(Failed):
    """A SQLite value has no faithful PostgreSQL form; nothing was committed."""


class CountsDiffer(Failed):
    """After the copy the two sides' counts differ; nothing was committed."""


@dataclass
class CopyResult:
    """What was copied, table by table, and the counts both sides gave."""

    order: list[str]
    deferred_keys: list[str]
    sqlite_counts: dict[str, int]
    postgres_counts: dict[str, int]
    sqlite_agents: dict[str, dict[str, int]]
    postgres_agents: dict[str, dict[str, int]]
    seconds_by_table: dict[str, float] = field(default_factory=dict)


async def _records(
    batches, table: str, columns: list[str], converters: list[Converter], counter: list[int]
) -> AsyncIterator[tuple]:
    for batch in batches:
        for row in batch:
            counter[0] += 1
            try:
                yield tuple(
                    None if v is None else conv(v) for v, conv in zip(row, converters, strict=True)
                )
            except (ValueError, TypeError) as exc:
                bad = next(
                    (c for c, v, f in zip(columns, row, converters, strict=True) if _fails(f, v)),
                    "?",
                )
                raise ValueNotConvertible(
                    f"SQLite {table}.{bad} (row {counter[0]}) has no PostgreSQL form: {exc}; "
                    "nothing was committed."
                ) from None
        await asyncio.sleep(0)


def _fails(conv: Converter, value) -> bool:
    if value is None:
        return False
    try:
        conv(value)
    except (ValueError, TypeError):
        return True
    return False


async def _copy(
    sqlite_path: Path,
    db: PostgresDatabase,
    plan: MovePlan,
    batch_rows: int,
    log: Callable[[str], None],
) -> CopyResult:
    schema = db.db_schema or "public"
    conn = await pg.connect(db)
    try:
        target = await pg.target_columns(conn, schema)
        converters = column_converters(plan, target)
        copied = {t.name: t for t in plan.copied()}
        order = copy_order(list(copied), await pg.foreign_keys(conn, schema))
        result = CopyResult(
            order=order.tables,
            deferred_keys=[f"{k.table}.{k.name}" for k in order.deferred],
            sqlite_counts={},
            postgres_counts={},
            sqlite_agents={},
            postgres_agents={},
        )
        with open_read_only(sqlite_path) as source:
            async with conn.transaction():
                for key in order.deferred:
                    await pg.drop_foreign_key(conn, schema, key)
                for name in order.tables:
                    started = time.monotonic()
                    table = copied[name]
                    counter = [0]
                    batches = stream_rows(source, name, table.columns, batch_rows)
                    records = _records(batches, name, table.columns, converters[name], counter)
                    await pg.copy_rows(conn, schema, name, table.columns, records)
                    result.seconds_by_table[name] = round(time.monotonic() - started, 3)
                    log(f"copied {name}: {counter[0]} rows")
                for key in order.deferred:
                    await pg.add_foreign_key(conn, schema, key)
                result.sqlite_counts = {n: row_count(source, n) for n in order.tables}
                result.postgres_counts = await pg.row_counts(conn, schema, order.tables)
                result.sqlite_agents = per_agent_counts(source)
                result.postgres_agents = await pg.per_agent_counts(conn, schema)
                differ = [
                    n for n in order.tables if result.sqlite_counts[n] != result.postgres_counts[n]
                ]
                if differ or result.sqlite_agents != result.postgres_agents:
                    what = differ[0] if differ else "per-agent messages or blocks"
                    raise CountsDiffer(
                        f"After the copy the counts differ ({what}); nothing was committed."
                    )
        return result
    finally:
        await conn.close()


def copy_all_rows(
    sqlite_path: Path,
    db: PostgresDatabase,
    plan: MovePlan | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    log: Callable[[str], None] = lambda _msg: None,
) -> CopyResult:
    """Copy every row (see the module's docstring); the target's schema must already be
    built by the same Letta version's alembic, and hold no rows."""
    if plan is None:
        with open_read_only(sqlite_path) as source:
            plan = source_plan(source)
    return asyncio.run(_copy(sqlite_path, db, plan, batch_rows, log))


async def _check_empty(db: PostgresDatabase) -> None:
    conn = await pg.connect(db)
    try:
        await pg.refuse_unless_empty(
            conn, db.db_schema or "public", db.redacted_uri(), db.extra_tables
        )
    finally:
        await conn.close()


def refuse_unless_empty(db: PostgresDatabase) -> None:
    """Refuse (one sentence) a target that holds Letta's objects already or lacks pgvector;
    the operator's own tables and schemas beside them are left alone."""
    asyncio.run(_check_empty(db))
