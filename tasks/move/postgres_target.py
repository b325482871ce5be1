"""The PostgreSQL side of a move, through asyncpg: emptiness, column types, foreign keys,
binary COPY, counts.

Why asyncpg here when letta-ops speaks pg8000 elsewhere: ``copy_records_to_table`` streams rows
in PostgreSQL's binary COPY format from an (async) iterable, the fastest way in that keeps
memory flat; pg8000 has no binary COPY. pgvector's type gets a binary codec of our own
(:func:`letta_ops.tasks.move.value_conversion.encode_vector`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass

import asyncpg

from ..errors import Refused
from ..postgres.database import PostgresDatabase
from ..postgres.letta_objects import LETTA_SEQUENCES, LETTA_TABLES, LETTA_TYPES
from ..postgres.letta_schema import quote_ident
from .table_order import ForeignKey
from .value_conversion import decode_vector, encode_vector


class TargetNotEmpty(Refused):
    """The PostgreSQL database already holds tables; a move only fills an empty one."""


class PgvectorMissing(Refused):
    """The target database has no pgvector extension."""


@dataclass(frozen=True)
class TargetColumn:
    name: str
    type_name: str
    is_enum: bool


async def connect(db: PostgresDatabase) -> asyncpg.Connection:
    """An asyncpg connection with the database's TLS settings and a vector codec."""
    parts = db.parts
    context = db.tls().ssl_context()
    tls: ssl.SSLContext | bool | str = "prefer" if context is None else context
    conn = await asyncpg.connect(
        host=str(parts["host"]),
        port=int(parts["port"]),
        user=str(parts["user"]),
        password=str(parts["password"]) or None,
        database=str(parts["database"]),
        ssl=tls,
    )
    vector_schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    )
    if vector_schema:
        await conn.set_type_codec(
            "vector",
            schema=vector_schema,
            encoder=encode_vector,
            decoder=decode_vector,
            format="binary",
        )
    return conn


async def refuse_unless_empty(
    conn: asyncpg.Connection, schema: str, where: str, also_tables: Iterable[str] = ()
) -> None:
    """Refuse a target already holding any of Letta's objects in ``schema`` (its tables by
    name, ``also_tables`` too, its sequence and its enum types: see
    :mod:`letta_ops.tasks.postgres.letta_objects`), or lacking pgvector.

    Why only Letta's: a database Letta shares (Supabase: ``auth`` and ``storage`` schemas,
    the operator's own tables in ``public``) is a target operators have, and Letta's alembic
    creates its objects beside those; an undone move drops only Letta's objects again.
    """
    tables = sorted(LETTA_TABLES | set(also_tables))
    found = await conn.fetch(
        """
        SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND (c.relname = ANY($2::text[]) OR c.relname = ANY($3::text[]))
        UNION ALL
        SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = $1 AND t.typtype = 'e' AND t.typname = ANY($4::text[])
        ORDER BY 1
        """,
        schema,
        tables,
        sorted(LETTA_SEQUENCES),
        sorted(LETTA_TYPES),
    )
    if found:
        names = [r["name"] for r in found]
        raise TargetNotEmpty(
            f"The PostgreSQL database {where} already holds Letta's objects (schema {schema}: "
            f"{len(names)}, first {names[0]!r}); move into a database without a Letta schema "
            "(a new one, or one whose other tables are not Letta's)."
        )
    if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'"):
        raise PgvectorMissing(
            f"The PostgreSQL database {where} has no pgvector; run CREATE EXTENSION vector in "
            "it as a superuser (or your provider's admin role) first."
        )


async def target_columns(conn: asyncpg.Connection, schema: str) -> dict[str, list[TargetColumn]]:
    """Every table of ``schema`` and its columns' type names, in column order."""
    rows = await conn.fetch(
        """
        SELECT c.relname, a.attname, t.typname, t.typtype = 'e' AS is_enum,
               et.typtype = 'e' AS is_enum_array
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typlen = -1 AND t.typelem <> 0
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0
          AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum
        """,
        schema,
    )
    tables: dict[str, list[TargetColumn]] = {}
    for r in rows:
        tables.setdefault(r["relname"], []).append(
            TargetColumn(r["attname"], r["typname"], bool(r["is_enum"] or r["is_enum_array"]))
        )
    return tables


async def foreign_keys(conn: asyncpg.Connection, schema: str) -> list[ForeignKey]:
    rows = await conn.fetch(
        """
        SELECT con.conname, c.relname AS child, p.relname AS parent,
               pg_get_constraintdef(con.oid) AS definition
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_class p ON p.oid = con.confrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE con.contype = 'f' AND n.nspname = $1
        """,
        schema,
    )
    return [ForeignKey(r["conname"], r["child"], r["parent"], r["definition"]) for r in rows]


async def drop_foreign_key(conn: asyncpg.Connection, schema: str, key: ForeignKey) -> None:
    await conn.execute(
        f"ALTER TABLE {quote_ident(schema)}.{quote_ident(key.table)} "
        f"DROP CONSTRAINT {quote_ident(key.name)}"
    )


async def add_foreign_key(conn: asyncpg.Connection, schema: str, key: ForeignKey) -> None:
    """Add the key back as it was: PostgreSQL checks every row against it."""
    await conn.execute(
        f"ALTER TABLE {quote_ident(schema)}.{quote_ident(key.table)} "
        f"ADD CONSTRAINT {quote_ident(key.name)} {key.definition}"
    )


async def copy_rows(
    conn: asyncpg.Connection,
    schema: str,
    table: str,
    columns: list[str],
    records: AsyncIterable[tuple],
) -> None:
    """One binary COPY of the table, fed from ``records`` as they come."""
    await conn.copy_records_to_table(table, records=records, columns=columns, schema_name=schema)


async def row_counts(conn: asyncpg.Connection, schema: str, tables: list[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        counts[table] = int(
            await conn.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
        )
    return counts


async def per_agent_counts(conn: asyncpg.Connection, schema: str) -> dict[str, dict[str, int]]:
    """Messages and blocks per agent id, read from PostgreSQL."""
    counts: dict[str, dict[str, int]] = {}
    for what, table in (("messages", "messages"), ("blocks", "blocks_agents")):
        rows = await conn.fetch(
            f"SELECT agent_id, count(*) AS n FROM {quote_ident(schema)}.{quote_ident(table)} "
            "GROUP BY agent_id"
        )
        for r in rows:
            counts.setdefault(str(r["agent_id"]), {"messages": 0, "blocks": 0})[what] = int(r["n"])
    return counts
