"""What a rollback will lose, in numbers: the rows written since a backup set was taken.

Why: a rollback puts the database back to the set. Everything written after it (messages the
agents exchanged, agents created, memory edited, passages stored) is gone from the server
(kept only in the pre-rollback safety set). An operator asked to confirm must see how much,
not only which agents: counted here from the rows' own timestamps (``created_at`` and
``updated_at``, which every Letta table of these kinds carries) against the set's time.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .database import PostgresDatabase
from .letta_schema import connect, quote_ident

#: What an operator calls each kind of row -> the Letta tables that hold it (the passage
#: tables were split across versions: whichever exist are counted).
KINDS = {
    "messages": ("messages",),
    "agents": ("agents",),
    "blocks": ("block",),
    "passages": ("archival_passages", "source_passages", "agent_passages", "passages"),
}


def rows_written_since(db: PostgresDatabase, since: datetime) -> dict[str, int]:
    """Per kind, the rows created or changed after ``since``, in one snapshot."""
    schema = db.db_schema or "public"
    with connect(db) as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        columns = _timestamp_columns(conn, schema)
        written = {}
        for kind, tables in KINDS.items():
            total = 0
            for table in tables:
                stamps = [c for c in ("created_at", "updated_at") if c in columns.get(table, ())]
                if not stamps:
                    continue
                newer = " OR ".join(f"{quote_ident(c)} > :since" for c in stamps)
                query = f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)} "
                total += conn.execute(sa.text(query + f"WHERE {newer}"), {"since": since}).scalar()
            written[kind] = int(total)
        return written


def agents_created_since(db: PostgresDatabase, since: datetime) -> list[str]:
    """Names of the agents created after ``since`` (gone after a rollback to that time)."""
    schema = db.db_schema or "public"
    with connect(db) as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT name FROM {quote_ident(schema)}.agents WHERE created_at > :since "
                "ORDER BY name"
            ),
            {"since": since},
        )
        return [name for (name,) in rows]


def _timestamp_columns(conn: sa.Connection, schema: str) -> dict[str, set[str]]:
    rows = conn.execute(
        sa.text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = :s AND column_name IN ('created_at', 'updated_at')"
        ),
        {"s": schema},
    )
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns
