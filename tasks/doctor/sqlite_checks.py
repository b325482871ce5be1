"""The doctor's checks of a server on SQLite: the file, its side files, and the version.

Why these three: a SQLite server fails in ways a PostgreSQL one cannot. Letta writes the file
*and* creates side files beside it, so a directory that is not writable breaks it even when the
file is (a hosted deploy's read-only home, in the operators' notes). A ``-wal`` or hot
``-journal`` beside the file of a server that is *down* holds committed data not yet in the
file: copying the file alone would lose it (letta-ops' online copy does not). And from 0.12 on,
Letta no longer serves SQLite at all: such a server must move to PostgreSQL before it upgrades.
"""

from __future__ import annotations

import os

from ..sqlite.database import SqliteDatabase, serves_sqlite
from ..sqlite.file_swap import side_files
from .findings import Finding, action, ok, skipped


def check_sqlite_file(sqlite: SqliteDatabase) -> Finding:
    """The file exists, and both it and its directory are writable by this user."""
    path, directory = sqlite.path, sqlite.letta_dir
    if not path.is_file():
        return action(
            "sqlite-file",
            f"there is no SQLite database at {path}",
            "Point LETTA_OPS_SQLITE_DB at the server's HOME/.letta/sqlite.db.",
        )
    unwritable = [str(p) for p in (path, directory) if not os.access(p, os.W_OK)]
    if unwritable:
        return action(
            "sqlite-file",
            f"not writable: {', '.join(unwritable)} (Letta writes the file and creates its "
            "journal beside it)",
            f"Give the server's user write access to {directory} and the file in it.",
        )
    return ok("sqlite-file", f"{path} ({path.stat().st_size} bytes), file and directory writable")


def check_sqlite_side_files(sqlite: SqliteDatabase, server_running: bool) -> Finding:
    """Side files while the server is down hold data the file alone lacks."""
    found = [p.name for p in side_files(sqlite.path) if p.stat().st_size > 0]
    if not found:
        return ok("sqlite-wal", "no WAL or journal beside the file: the file holds everything")
    if server_running:
        return ok("sqlite-wal", f"{', '.join(found)} in use by the running server")
    return action(
        "sqlite-wal",
        f"{', '.join(found)} beside the file of a server that is down: committed data not yet "
        "in the file (a copy of the file alone would lose it)",
        "Start the server once (SQLite folds them in), or back it up with letta-ops, whose "
        "online copy includes them; never copy sqlite.db alone.",
    )


def check_sqlite_version(version: str | None) -> Finding:
    """Whether the running version still serves SQLite (it cannot upgrade on SQLite)."""
    if version is None:
        return skipped("sqlite-version", "the server does not answer")
    if not serves_sqlite(version):
        return action(
            "sqlite-version",
            f"Letta {version} no longer serves SQLite",
            "Move the server to PostgreSQL first: letta-ops move-to-postgres.",
        )
    return ok(
        "sqlite-version",
        f"Letta {version} serves SQLite; no release from 0.12 on does: upgrading means moving "
        "to PostgreSQL first (letta-ops move-to-postgres)",
    )
