"""Reading a Letta SQLite database without changing it: tables, columns, sizes, rows.

Why read-only: the move must leave the SQLite file as it was (the way back if anything fails),
so it is opened ``mode=ro`` and the file's checksum is taken before and after. Rows stream
through ``fetchmany`` in bounded batches: memory stays flat whatever the file's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

#: Tables Letta keeps only on SQLite, and what stands for them on PostgreSQL.
SQLITE_ONLY_TABLES = {
    "message_sequence": "Letta's SQLite stand-in for the message_seq_id sequence, which is set "
    "past max(messages.sequence_id) instead",
}

#: Tables never copied: the target's own alembic writes its revision.
NOT_COPIED = {"alembic_version"}


def quote_sqlite(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def open_read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The file, read-only (never created, never written)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a SQLite database file")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def file_checksum(path: Path) -> str:
    """sha256 of the database file (and its -wal, when one is there)."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + "-wal")):
        if part.exists():
            with part.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [name for (name,) in rows]


def sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({quote_sqlite(table)})")]


def row_count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {quote_sqlite(table)}").fetchone()[0])


def table_bytes(conn: sqlite3.Connection, table: str) -> int:
    """Bytes the table's pages take (``dbstat``), or the sum of its values' lengths where
    SQLite was built without ``dbstat``."""
    with contextlib.suppress(sqlite3.OperationalError):
        value = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (table,)).fetchone()[
            0
        ]
        return int(value or 0)
    columns = sqlite_columns(conn, table)
    total = " + ".join(f"coalesce(length({quote_sqlite(c)}), 0)" for c in columns) or "0"
    return int(conn.execute(f"SELECT sum({total}) FROM {quote_sqlite(table)}").fetchone()[0] or 0)


def stream_rows(
    conn: sqlite3.Connection, table: str, columns: list[str], batch_rows: int
) -> Iterator[list[tuple]]:
    """The table's rows in batches of at most ``batch_rows``, in rowid order where it has one."""
    names = ", ".join(quote_sqlite(c) for c in columns)
    cursor = conn.execute(f"SELECT {names} FROM {quote_sqlite(table)}")
    while batch := cursor.fetchmany(batch_rows):
        yield batch


def per_agent_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Messages and blocks per agent id, read from SQLite."""
    counts: dict[str, dict[str, int]] = {}
    tables = set(sqlite_tables(conn))
    for what, table in (("messages", "messages"), ("blocks", "blocks_agents")):
        if table not in tables:
            continue
        for agent_id, n in conn.execute(
            f"SELECT agent_id, count(*) FROM {table} GROUP BY agent_id"
        ):
            counts.setdefault(str(agent_id), {"messages": 0, "blocks": 0})[what] = int(n)
    return counts
