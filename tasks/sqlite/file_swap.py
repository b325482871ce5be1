"""Put a checked copy in place of a stopped server's SQLite file, atomically.

Why this order: SQLite keeps what it has not yet written into the main file beside it
(``sqlite.db-wal`` in WAL mode, a hot ``sqlite.db-journal`` after a crash in rollback-journal
mode), and applies whatever it finds there to whatever ``sqlite.db`` is when it next opens it.
A new file renamed in beside an old WAL or journal would be "repaired" with the old file's
pages: a corrupt database. So the live file is settled first (opened once by SQLite, which
rolls a hot journal back and checkpoints the WAL into the file), its side files removed (empty
now: nothing is lost if the run dies here), and only then is the copy, written beside it in
the same directory and fsynced, renamed over it, and the directory fsynced. At every moment
the path holds either the old database, whole, or the new one.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from .online_copy import SqliteCopyFailed

#: The files SQLite keeps beside a database, by suffix.
SIDE_FILES = ("-wal", "-shm", "-journal")


def incoming_path(path: Path) -> Path:
    """Where a copy is written before it replaces ``path``: beside it (one filesystem, so the
    rename is atomic), named so that no Letta opens it."""
    return path.with_name(f".{path.name}.letta-ops-incoming")


def side_files(path: Path) -> list[Path]:
    """The side files of ``path`` that exist now."""
    return [p for p in (path.with_name(path.name + s) for s in SIDE_FILES) if p.exists()]


def settle(path: Path, timeout: float = 60) -> None:
    """Let SQLite finish the live file's business: a hot journal rolled back, the WAL
    checkpointed into the file and truncated. Nothing is written when there is none.

    A checkpoint that stays busy for ``timeout`` seconds means another process still has the
    file open (a reader holds the WAL): removing its side files under it would corrupt what
    it reads, so the file is left as it was and the run stops here."""
    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(path, timeout=timeout)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:
                    raise SqliteCopyFailed(
                        f"{path} is open in another process (its WAL stayed busy for "
                        f"{timeout:g} s); it was left as it was: stop what uses it and run again."
                    )
    except sqlite3.Error as exc:
        raise SqliteCopyFailed(
            f"SQLite could not settle {path} before replacing it: {exc}; it was left as it was."
        ) from exc


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def swap_in(incoming: Path, path: Path, settle_timeout: float = 60) -> None:
    """Replace ``path`` with ``incoming`` (same directory), side files first, fsynced."""
    if incoming.parent != path.parent:
        raise SqliteCopyFailed(f"{incoming} must lie beside {path} for an atomic rename.")
    fsync_file(incoming)
    settle(path, settle_timeout)
    for side in side_files(path):
        side.unlink()
    os.replace(incoming, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
