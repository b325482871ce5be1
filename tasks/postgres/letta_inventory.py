"""What a Letta database holds, per agent: counted in SQL, because no endpoint counts messages.

Why: "every agent came back" must be proven, not assumed. Migrate upgrades compare by agent
id and require message and block counts not to drop; rebuilds compare by (sanitized) name and
report what agent files could not carry.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .database import PostgresDatabase
from .letta_schema import connect, quote_ident

#: Tables of archival memory across versions (renamed over time).
PASSAGE_TABLES = ("archival_passages", "agent_passages", "passages")


def _has_table(conn: Connection, schema: str, table: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT to_regclass(:t)"), {"t": f"{quote_ident(schema)}.{quote_ident(table)}"}
        ).scalar()
    )


def _has_column(conn: Connection, schema: str, table: str, column: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t AND column_name = :c"
            ),
            {"s": schema, "t": table, "c": column},
        ).scalar()
    )


def _live(conn: Connection, schema: str, table: str) -> str:
    return " WHERE NOT is_deleted" if _has_column(conn, schema, table, "is_deleted") else ""


def agent_inventory(db: PostgresDatabase) -> dict[str, dict]:
    """``{agent_id: {"name", "messages", "blocks"}}`` for every live agent."""
    schema = db.db_schema or "public"
    q = quote_ident(schema)
    with connect(db) as conn:
        agents = conn.execute(
            sa.text(f"SELECT id, name FROM {q}.agents{_live(conn, schema, 'agents')}")
        ).all()
        inventory = {row.id: {"name": row.name, "messages": 0, "blocks": 0} for row in agents}
        messages = conn.execute(
            sa.text(
                f"SELECT agent_id, count(*) AS n FROM {q}.messages"
                f"{_live(conn, schema, 'messages')} GROUP BY agent_id"
            )
        ).all()
        for row in messages:
            if row.agent_id in inventory:
                inventory[row.agent_id]["messages"] = int(row.n)
        if _has_table(conn, schema, "blocks_agents"):
            for row in conn.execute(
                sa.text(f"SELECT agent_id, count(*) AS n FROM {q}.blocks_agents GROUP BY agent_id")
            ):
                if row.agent_id in inventory:
                    inventory[row.agent_id]["blocks"] = int(row.n)
    return inventory


def archival_passage_count(db: PostgresDatabase) -> int:
    schema = db.db_schema or "public"
    with connect(db) as conn:
        return sum(
            int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(t)}")
                ).scalar()
            )
            for t in PASSAGE_TABLES
            if _has_table(conn, schema, t)
        )


def database_size(db: PostgresDatabase) -> int:
    with connect(db) as conn:
        return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar())


def compare_by_id(before: dict[str, dict], after: dict[str, dict]) -> list[dict]:
    """Problems of a lossless upgrade: missing agents, or fewer messages/blocks than before."""
    problems = []
    for agent_id, old in sorted(before.items()):
        new = after.get(agent_id)
        if new is None:
            problems.append({"agent": agent_id, "name": old["name"], "problem": "missing"})
            continue
        for key in ("messages", "blocks"):
            if new[key] < old[key]:
                problems.append(
                    {
                        "agent": agent_id,
                        "name": old["name"],
                        "problem": f"{key} {old[key]} -> {new[key]}",
                    }
                )
    return problems
