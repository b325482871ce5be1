"""pg_dump and pg_restore, streamed, with the password in the environment only.

Why streamed: a dump is the lossless artifact and can be tens of GB; it goes from pg_dump's
stdout straight into the object store (multipart), so memory stays at about one upload part.
Why a snapshot: the per-table row counts in the manifest must describe exactly what is in the
dump, so they are counted in the very transaction snapshot that pg_dump exports.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from blocks.letta_database import LettaDatabase
from tasks.letta_postgres import connect, counts_in_snapshot
from tasks.object_store import ObjectStore, StoredObject

#: pg_restore messages that are expected when restoring a Letta dump into a fresh database
#: created by letta-ops (the extension and schema already exist there).
BENIGN_RESTORE_ERRORS = (
    'extension "vector" already exists',
    'schema "public" already exists',
)


class PgToolError(RuntimeError):
    """pg_dump / pg_restore failed; the message carries their stderr (never a password)."""


@dataclass(frozen=True)
class DumpResult:
    stored: StoredObject
    row_counts: dict[str, int]
    postgres_version: str
    pgvector_version: str | None


def tool(db: LettaDatabase, name: str) -> str:
    path = db.bin_dir() / name
    if not path.exists():
        raise PgToolError(
            f"{name} was not found in {db.bin_dir()}; set pg_bin_dir on the Letta Database "
            "block (or LETTA_OPS_PG_BIN) to a PostgreSQL client of the server's major or newer."
        )
    return str(path)


def tool_env(db: LettaDatabase) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(db.libpq_env())
    return env


def tool_version(db: LettaDatabase, name: str = "pg_dump") -> str:
    out = subprocess.run([tool(db, name), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


class ProcessOutput(io.RawIOBase):
    """A child's stdout as a stream that raises, instead of ending, if the child failed.

    So an upload of a failed pg_dump is aborted by the store and never becomes an object.
    """

    def __init__(self, proc: subprocess.Popen, what: str, stderr: list[bytes]) -> None:
        self.proc, self.what, self._stderr = proc, what, stderr

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.proc.stdout.readinto(buffer)
        if n == 0:
            code = self.proc.wait()
            if code != 0:
                raise PgToolError(
                    f"{self.what} failed (exit {code}): "
                    f"{b''.join(self._stderr).decode(errors='replace')[-2000:]}"
                )
        return n


@contextlib.contextmanager
def _drain_stderr(proc: subprocess.Popen) -> Iterator[list[bytes]]:
    chunks: list[bytes] = []
    thread = threading.Thread(
        target=lambda: chunks.extend(iter(proc.stderr.readline, b"")), daemon=True
    )
    thread.start()
    try:
        yield chunks
    finally:
        thread.join(timeout=30)


def dump_to_store(db: LettaDatabase, store: ObjectStore, key: str, progress=None) -> DumpResult:
    """``pg_dump -Fc`` into ``store[key]``, with row counts taken in the dump's own snapshot."""
    schema = db.db_schema or "public"
    with connect(db) as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar()
        pg_version = conn.execute(sa.text("SHOW server_version")).scalar()
        vector = conn.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        counts = counts_in_snapshot(conn, schema)
        proc = subprocess.Popen(
            [
                tool(db, "pg_dump"),
                "--format=custom",
                "--compress=6",
                f"--snapshot={snapshot}",
                "--no-password",
            ],
            env=tool_env(db),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            with _drain_stderr(proc) as stderr:
                stream = io.BufferedReader(ProcessOutput(proc, "pg_dump", stderr), 1 << 20)
                stored = store.put_stream(key, stream, progress=progress)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        conn.rollback()
    return DumpResult(stored, counts, str(pg_version), vector)


def list_dump(bin_dir: Path, dump_path: Path) -> list[str]:
    """``pg_restore --list``: the archive's table of contents; fails on a damaged archive."""
    result = subprocess.run(
        [str(bin_dir / "pg_restore"), "--list", str(dump_path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise PgToolError(f"pg_restore --list failed: {result.stderr.strip()[-2000:]}")
    return [line for line in result.stdout.splitlines() if line and not line.startswith(";")]


def restore_dump(db: LettaDatabase, dump_path: Path, jobs: int = 1) -> list[str]:
    """Restore a custom-format dump into ``db`` (existing, empty); returns benign warnings.

    ``--no-owner`` because the target's roles need not match the source's. Any error other
    than the known benign ones fails the restore.
    """
    cmd = [
        tool(db, "pg_restore"),
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "-d",
        db.database_name,
    ]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    result = subprocess.run(
        cmd + [str(dump_path)], env=tool_env(db), capture_output=True, text=True
    )
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    real = [e for e in errors if not any(b in e for b in BENIGN_RESTORE_ERRORS)]
    if real or (result.returncode != 0 and not errors):
        raise PgToolError(
            f"pg_restore failed: {' | '.join(real or [result.stderr.strip()])[:2000]}"
        )
    return errors


_TABLE_DATA = re.compile(r"TABLE DATA (\S+) (\S+)")


def tables_in_dump(toc: list[str]) -> set[str]:
    return {m.group(2) for line in toc if (m := _TABLE_DATA.search(line))}
