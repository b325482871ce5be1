"""A consistent copy of a live Letta SQLite file, and what letta-ops reads from one.

Why SQLite's online backup API and not a file copy: a server writing while ``cp`` reads gives
a file whose pages come from different moments (a torn copy that ``integrity_check`` may or may
not catch), and a file in WAL mode keeps its newest commits in ``sqlite.db-wal`` beside it.
``sqlite3.Connection.backup`` copies the database page by page through SQLite itself: it sees
committed data only, WAL included, and the result is one self-contained file.

The copy is taken in one step (``pages=-1``): one read transaction, so the copy is the database
as of one commit. Stepwise copying lets writers in between steps, but SQLite restarts the copy
each time another connection writes, so a busy server could keep it from ever finishing.
Writers wait for that one read (Letta's SQLite connections wait on a busy database): about a
second per few hundred MB here.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..errors import Failed, Refused


class SqliteMissing(Refused):
    """The SQLite file letta-ops was pointed at does not exist."""


class SqliteCopyFailed(Failed):
    """SQLite could not copy or read the database."""


@dataclass(frozen=True)
class SqliteCopy:
    """A copy made by :func:`online_copy`: where it is, and what it holds."""

    path: Path
    row_counts: dict[str, int]
    bytes: int
    sqlite_version: str
    alembic_revision: str | None


def _open_existing(path: Path) -> sqlite3.Connection:
    """Open a database that must exist (``sqlite3.connect`` would create an empty one)."""
    if not path.is_file():
        raise SqliteMissing(
            f"There is no SQLite database at {path}; point letta-ops at the server's "
            "HOME/.letta/sqlite.db."
        )
    return sqlite3.connect(path, timeout=60)


def online_copy(source: Path, destination: Path) -> SqliteCopy:
    """Copy the live database ``source`` into the new file ``destination`` (online backup
    API, one read transaction) and read its counts from the copy itself, so the counts are
    those of the copied snapshot."""
    if destination.exists():
        raise SqliteCopyFailed(f"{destination} exists; a copy is only ever written to a new file.")
    try:
        with closing(_open_existing(source)) as live, closing(sqlite3.connect(destination)) as out:
            live.backup(out, pages=-1)
    except sqlite3.Error as exc:
        raise SqliteCopyFailed(f"SQLite could not copy {source}: {exc}.") from exc
    return describe_copy(destination)


def describe_copy(path: Path) -> SqliteCopy:
    """Counts, size, SQLite version and alembic revision of a (copied) database file."""
    with closing(_open_existing(path)) as conn:
        return SqliteCopy(
            path=path,
            row_counts=_counts(conn),
            bytes=path.stat().st_size,
            sqlite_version=sqlite3.sqlite_version,
            alembic_revision=_alembic_revision(conn),
        )


def table_counts(path: Path) -> dict[str, int]:
    """Table -> rows, for every table of the database at ``path``."""
    with closing(_open_existing(path)) as conn:
        return _counts(conn)


def integrity_problems(path: Path) -> list[str]:
    """``PRAGMA integrity_check``'s findings; empty when it answers ``ok``."""
    with closing(_open_existing(path)) as conn:
        try:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # not a database at all
            return [str(exc)]
    return [] if rows == ["ok"] else rows


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [name for (name,) in rows]


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    quoted = {t: '"' + t.replace('"', '""') + '"' for t in _tables(conn)}
    return {t: conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0] for t, q in quoted.items()}


def _alembic_revision(conn: sqlite3.Connection) -> str | None:
    """Letta's SQLite schema is made by ``create_all`` (no alembic table): None then."""
    if "alembic_version" not in _tables(conn):
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None
