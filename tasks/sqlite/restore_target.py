"""The SQLite file a restore writes a set's copy to: is it one, and does it hold anything.

Why its own module: ``restore SET --sqlite PATH`` is the one place an operator names a SQLite
file that is not their server's. Before anything changes the restore must know that the path
is a place Letta opens (``HOME/.letta/sqlite.db``, :mod:`.database`), that whatever is there
now is a SQLite database (a restore never renames a copy over a file of another kind), and
how many tables it holds (a non-empty target is replaced only with ``--force``). Read-only:
the file is opened with ``mode=ro`` and never created.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from ..errors import Refused
from ..server_naming import sanitize_server_name
from .database import SqliteDatabase

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteTargetRefused(Refused):
    """The SQLite target cannot take the set as named; nothing was changed."""


def sqlite_target(reference: str) -> SqliteDatabase:
    """What ``--sqlite`` names (the file, its ``.letta`` directory or Letta's URI), refused in
    one sentence when it is a PostgreSQL URI or a path no Letta opens."""
    if (reference or "").strip().startswith(("postgres://", "postgresql")):
        raise SqliteTargetRefused(
            "--sqlite names a SQLite file (HOME/.letta/sqlite.db), not a PostgreSQL database; "
            "restore a PostgreSQL set with --database."
        )
    return SqliteDatabase.from_reference(reference)


def target_tables(target: SqliteDatabase) -> int:
    """How many tables the target file holds now (0: it does not exist or is empty); refused
    when something that is not a SQLite database is in its place."""
    path = target.path
    if not path.exists():
        return 0
    if not path.is_file():
        raise SqliteTargetRefused(f"{path} is not a file; restore will not replace it.")
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        return 0
    if header != SQLITE_HEADER:
        raise SqliteTargetRefused(
            f"{path} is not a SQLite database (its header is not SQLite's); restore will not "
            "replace it: move it away or name another Letta home."
        )
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchone()
    except sqlite3.Error as exc:
        raise SqliteTargetRefused(
            f"SQLite cannot read {path} ({exc}); restore will not replace it."
        ) from exc
    return int(row[0])


def require_room(target: SqliteDatabase, size: int) -> None:
    """The copy is downloaded beside the target: refuse when its directory (or the nearest
    one that exists) has less than ``size`` bytes free."""
    place = target.letta_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free
    if free < size:
        raise SqliteTargetRefused(
            f"Only {free} bytes are free in {place} for a copy of {size} bytes; free some space."
        )


def prepare_directory(target: SqliteDatabase) -> Path:
    """Create the target's ``.letta`` directory (owner only) when it does not exist yet."""
    target.letta_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return target.letta_dir


def sqlite_target_name(target: SqliteDatabase) -> str:
    """The name a restore onto a file no server of the profile runs on goes under (its lock,
    history and journal): ``sqlite-`` + the Letta home's name + 8 hex digits of the file's
    path, so two homes of one name differ. ``recover`` finds the run with
    ``LETTA_OPS_SERVER_NAME`` set to it and ``LETTA_OPS_SQLITE_DB`` to the file."""
    digest = hashlib.sha256(str(target.path).encode()).hexdigest()[:8]
    return sanitize_server_name(f"sqlite-{target.server_home.name}-{digest}")
