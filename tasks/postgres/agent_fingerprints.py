"""Per-agent fingerprints of a Letta database: has anything an agent file is made of changed?

Why (issue #32): on long histories the agent exports through Letta's API are the long pole of a
backup (one export in flight, 1-1.5 s per agent). Restic does not re-read a file whose metadata
is unchanged since the parent snapshot; a backup does not export again an agent whose rows are
unchanged since the previous verified set (``tasks/sets/export_reuse.py``). This module says,
cheaply and for any Letta version, whether they are.

What an agent's fingerprint covers, read in one ``REPEATABLE READ`` read-only transaction
(one snapshot), one round trip per table:

* its row in ``agents``: a sha256 of the whole row's text (every column);
* every table of Letta's schema (``LettaDatabase.db_schema``, else ``public``) with an
  ``agent_id`` column (found in ``pg_catalog``, no list): per agent, ``count(*)``,
  ``sum(xmin)`` and ``max(xmin)`` of its rows. Every insert, update (a new row version, a new
  xmin) or delete of one of the agent's rows changes one of the three; xmin is a header field
  of the heap tuple, so no TOAST is read;
* *link tables*: a table with ``agent_id`` whose primary key holds ``agent_id`` and the columns
  of another foreign key (``blocks_agents``, ``tools_agents``, ``sources_agents``,
  ``identities_agents``, ``groups_agents``, ``archives_agents``...: found by their constraints,
  not by name): the same three figures over the *referenced* rows, per agent, so a block edited
  or a tool's source changed changes the fingerprint of every agent linked to it.

The figures are combined into one sha256 hex per agent.

What it cannot see (the backup then reuses a file that an export would have written
differently; the pg_dump beside it is always fresh and lossless):

* a row reachable only through two hops or through a table that is not a link table: a
  source's files (``sources_agents`` -> ``sources`` -> ``files``), a tool's MCP server, the
  file a ``files_agents`` row points to (its own rows count, the file's do not), an
  organization's or a provider's settings;
* anything outside PostgreSQL that an export reads (the server's settings or environment, its
  ``LETTA_ENCRYPTION_KEY``); the Letta version and alembic revision are compared by the caller;
* a table whose rows reference an agent by another column than ``agent_id``;
* transaction id wraparound: xmin is a 32-bit counter, so after about 4 billion transactions
  a changed row can carry the xmin it had, and in theory equal counts and sums can hide a change;
* a rewrite that keeps every xmin (``VACUUM FULL``, ``CLUSTER``, freezing) is not a change,
  and is not one for the export either. A dump restored into the database rewrites every xmin:
  every agent is exported again (the safe direction).

SQLite servers get no fingerprint: every agent is exported.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .database import PostgresDatabase
from .letta_schema import connect, quote_ident

#: Tables of ``schema`` with an ``agent_id`` column (plain or partitioned, not partitions).
_AGENT_TABLES_SQL = """
SELECT c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'agent_id' AND NOT a.attisdropped
WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'agents'
ORDER BY c.relname
"""

#: Foreign keys of those tables that lie inside their primary key beside ``agent_id``: the
#: links of link tables, with the referenced table and the column pairs, in key order.
_LINKS_SQL = """
WITH pk AS (
    SELECT k.conrelid, k.conkey FROM pg_constraint k WHERE k.contype = 'p'
)
SELECT c.relname AS link, k.conname, rn.nspname AS ref_schema, r.relname AS ref_table,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num
             ORDER BY u.i) AS columns,
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num
             ORDER BY u.i) AS ref_columns
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class r ON r.oid = k.confrelid
JOIN pg_namespace rn ON rn.oid = r.relnamespace
JOIN pk ON pk.conrelid = k.conrelid
JOIN pg_attribute agent ON agent.attrelid = k.conrelid AND agent.attname = 'agent_id'
WHERE k.contype = 'f' AND n.nspname = :schema AND c.relname = ANY(CAST(:tables AS text[]))
  AND agent.attnum = ANY(pk.conkey) AND NOT agent.attnum = ANY(k.conkey)
  AND k.conkey <@ pk.conkey
ORDER BY c.relname, k.conname
"""

_XMIN = "CAST(CAST({alias}.xmin AS text) AS bigint)"


@dataclass(frozen=True)
class Link:
    """A foreign key of a link table, followed to the rows it references."""

    name: str
    ref_schema: str
    ref_table: str
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class AgentFingerprints:
    """One sha256 hex per agent id of ``agents``, what was read, and how long it took."""

    by_agent: dict[str, str]
    tables: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    seconds: float = 0.0


def agent_fingerprints(db: PostgresDatabase) -> AgentFingerprints:
    """Every agent's fingerprint, in one snapshot of the database (see the module's docstring
    for what it detects and what it cannot)."""
    started = time.monotonic()
    schema = db.db_schema or "public"
    with connect(db) as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        parts: dict[str, list[str]] = {
            agent_id: [f"agents {digest}"]
            for agent_id, digest in conn.execute(
                sa.text(
                    "SELECT CAST(a.id AS text), encode(sha256(convert_to(CAST(a AS text), "
                    f"'UTF8')), 'hex') FROM {quote_ident(schema)}.agents AS a"
                )
            )
        }
        tables = [r[0] for r in conn.execute(sa.text(_AGENT_TABLES_SQL), {"schema": schema})]
        links = _links(conn, schema, tables)
        for table in tables:
            figures = _table_figures(conn, schema, table, links.get(table, []))
            for source in [table, *(f"{table}->{link.name}" for link in links.get(table, []))]:
                for agent_id, agent_parts in parts.items():
                    agent_parts.append(f"{source} {figures.get((source, agent_id), '0 0 0')}")
        conn.rollback()
    return AgentFingerprints(
        by_agent={
            agent_id: hashlib.sha256("\n".join(lines).encode()).hexdigest()
            for agent_id, lines in parts.items()
        },
        tables=tables,
        links=[f"{t}->{link.ref_table}" for t, found in sorted(links.items()) for link in found],
        seconds=round(time.monotonic() - started, 3),
    )


def _links(conn: Connection, schema: str, tables: list[str]) -> dict[str, list[Link]]:
    found: dict[str, list[Link]] = {}
    if not tables:
        return found
    for row in conn.execute(sa.text(_LINKS_SQL), {"schema": schema, "tables": tables}):
        found.setdefault(row.link, []).append(
            Link(
                row.conname,
                row.ref_schema,
                row.ref_table,
                tuple(row.columns),
                tuple(row.ref_columns),
            )
        )
    return found


def _table_figures(
    conn: Connection, schema: str, table: str, links: list[Link]
) -> dict[tuple[str, str], str]:
    """``{(source, agent_id): "count sum max"}`` for the table's own rows and, for each link,
    the rows it references: one statement, one round trip."""
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    selects = [
        f"SELECT CAST(:own AS text) AS source, CAST(t.agent_id AS text) AS agent_id, "
        f"count(*) AS n, sum({_XMIN.format(alias='t')}) AS total, "
        f"max({_XMIN.format(alias='t')}) AS newest FROM {qualified} AS t GROUP BY t.agent_id"
    ]
    params = {"own": table}
    for i, link in enumerate(links):
        on = " AND ".join(
            f"r.{quote_ident(ref)} = t.{quote_ident(col)}"
            for col, ref in zip(link.columns, link.ref_columns, strict=True)
        )
        params[f"link{i}"] = f"{table}->{link.name}"
        selects.append(
            f"SELECT CAST(:link{i} AS text), CAST(t.agent_id AS text), count(r.*), "
            f"sum({_XMIN.format(alias='r')}), max({_XMIN.format(alias='r')}) "
            f"FROM {qualified} AS t JOIN {quote_ident(link.ref_schema)}."
            f"{quote_ident(link.ref_table)} AS r ON {on} GROUP BY t.agent_id"
        )
    rows = conn.execute(sa.text(" UNION ALL ".join(selects)), params)
    return {(row[0], row[1]): f"{row[2]} {row[3]} {row[4]}" for row in rows}
