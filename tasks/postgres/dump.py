"""pg_dump and pg_restore, streamed, with the password in the environment only.

Why streamed: a dump is the lossless artifact and can be tens of GB; it goes from pg_dump's
stdout straight into the object store (multipart), so memory stays at about one upload part.
Why a snapshot: the per-table row counts in the manifest must describe exactly what is in the
dump, so they are counted in the very transaction snapshot that pg_dump exports.
Why only Letta's schema, and in it only Letta's tables: a database Letta shares (Supabase's
``auth`` and ``storage``, the operator's own tables beside Letta's) is not letta-ops' to copy
or to put back; :mod:`letta_ops.tasks.postgres.letta_objects` says which objects are Letta's, and a
restore leaves out whatever the target keeps that is not Letta's.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import Refused, final_error_line
from ..store.objects import ObjectStore, StoredObject
from .client_tools import (
    LocalPgClientTools,
    PgClientTools,
    PgToolError,
    client_tools,
)
from .database import PostgresDatabase
from .dump_compression import DEFAULT_COMPRESSION, parse_compression
from .dump_priority import DEFAULT_DUMP_PRIORITY, lower_priority, parse_dump_priority
from .letta_objects import inventory
from .letta_schema import (
    connect,
    counts_in_snapshot,
    quote_ident,
    revision_in_snapshot,
    table_sizes,
)
from .pooler import refuse_transaction_pooler
from .privileges import require_supported_server

log = logging.getLogger(__name__)

#: Servers older than this reject ``SET transaction_timeout``, which pg_dump/pg_restore >= 17
#: send on every connection. That error, and only it, is expected from an older server.
TRANSACTION_TIMEOUT_FROM_MAJOR = 17


#: The pipe into pg_restore is widened to this (Linux ``F_SETPIPE_SZ``): with the default
#: 64 KiB a 1 GiB dump costs some 16 000 wake-ups of each side, a measured 0.4 s of CPU.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


def widen_pipe(pipe: Any) -> None:
    """Best effort: a kernel without ``F_SETPIPE_SZ`` (or a lower limit) keeps its size."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError, ValueError):
        pass


@dataclass(frozen=True)
class DumpResult:
    stored: StoredObject
    row_counts: dict[str, int]
    postgres_version: str
    pgvector_version: str | None
    compression: str = DEFAULT_COMPRESSION
    table_bytes: dict[str, int] = field(default_factory=dict)
    #: The schema pgvector lives in (``extensions`` on Supabase): a new database for this
    #: dump must have it there, since the dump names pgvector's type by it.
    pgvector_schema: str | None = None
    #: What the dump leaves out because it is not Letta's (as plans name them).
    left_out: list[str] = field(default_factory=list)
    #: What could not be done to lower pg_dump's priority (empty: all of it, or ``normal``).
    priority_notes: list[str] = field(default_factory=list)


def require_compression_supported(db: PostgresDatabase, compression: str) -> None:
    """zstd and lz4 only work with a client built with them (the bundled 18 is not): ask the
    client itself, before anything is dumped. It checks the method before it connects."""
    if compression.partition(":")[0] not in ("zstd", "lz4"):
        return
    tools = client_tools(db)
    # A server that cannot exist: the method is checked before any connection is tried.
    probe = tools.run(
        "pg_dump",
        f"--compress={compression}",
        "--schema-only",
        "-f",
        os.devnull,
        "--dbname=host=/nonexistent dbname=x",
    )
    if "compression" in probe.stderr:
        why = final_error_line(probe.stderr).removeprefix("pg_dump: error: ")
        raise Refused(
            f"The pg_dump of the {tools.describe()} cannot compress with {compression}: {why}; "
            "use a gzip level or none, or set pg_bin_dir (or LETTA_OPS_PG_BIN) to a PostgreSQL "
            "client built with it."
        )


def tool(db: PostgresDatabase, name: str) -> str:
    """The path of ``name`` on this host (benches and tests that run the raw tools)."""
    return LocalPgClientTools(db.bin_dir(), db.libpq_env()).tool_path(name)


def tool_env(db: PostgresDatabase) -> dict[str, str]:
    return LocalPgClientTools(db.bin_dir(), db.libpq_env()).env()


def tool_version(db: PostgresDatabase, name: str = "pg_dump") -> str:
    return client_tools(db).version(name)


class StderrDrain:
    """Reads a child's stderr in a thread (so a full pipe never blocks it); ``text()`` waits
    for the child's last line before answering, so an error message is never cut short."""

    def __init__(
        self, proc: subprocess.Popen, on_line: Callable[[str], None] | None = None
    ) -> None:
        self._chunks: list[bytes] = []
        self._on_line = on_line
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stderr.readline, b""):
            self._chunks.append(line)
            if self._on_line is not None:
                self._on_line(line.decode(errors="replace"))

    def text(self, timeout: float = 30) -> str:
        self._thread.join(timeout=timeout)
        return b"".join(self._chunks).decode(errors="replace")


#: How much of pg_dump's output may wait in memory while a dump the command started waits for
#: its run (:mod:`.early_dump`): enough for the seconds the command imports Prefect.
EARLY_SPOOL_BYTES = 64 << 20
#: ... and while the store takes it (beside the widened pipe and the upload's own parts): a
#: dump's memory stays bounded by the store's part size, as before the spool.
STREAM_SPOOL_BYTES = 1 << 20
_SPOOL_READ = 1 << 20


class SpooledOutput(io.RawIOBase):
    """A child's stdout, read by a thread into at most ``limit`` bytes of memory, as a stream
    that raises, instead of ending, if the child failed.

    Why spooled: the child keeps writing while the reader waits (a part going to the store, or
    a run still starting, :mod:`.early_dump`). Why raising: an upload of a failed pg_dump is
    aborted by the store and never becomes an object.
    """

    def __init__(
        self,
        proc: subprocess.Popen,
        what: str,
        stderr: StderrDrain,
        limit: int = STREAM_SPOOL_BYTES,
    ) -> None:
        self.proc, self.what, self._stderr, self._limit = proc, what, stderr, limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._spooled = 0
        self._ended = self._closed = False
        self._pending = memoryview(b"")
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._fill, name=f"{what}-spool", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while True:
                chunk = self.proc.stdout.read1(_SPOOL_READ)
                with self._ready:
                    while self._spooled >= self._limit and not self._closed:
                        self._ready.wait()
                    if self._closed:
                        return
                    if chunk:
                        self._chunks.append(chunk)
                        self._spooled += len(chunk)
                    self._ready.notify_all()
                if not chunk:
                    break
        except (OSError, ValueError):  # the pipe closed under it: the child was stopped
            pass
        finally:
            with self._ready:
                self._ended = True
                self._ready.notify_all()

    def set_limit(self, limit: int) -> None:
        """Hold at most ``limit`` bytes from now on (what is spooled beyond it drains first)."""
        with self._ready:
            self._limit = limit
            self._ready.notify_all()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending:
            with self._ready:
                while not self._chunks and not self._ended:
                    self._ready.wait()
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._spooled -= len(chunk)
                    self._ready.notify_all()
                    self._pending = memoryview(chunk)
            if not self._pending:
                code = self.proc.wait()
                if code != 0:
                    stderr = self._stderr.text()
                    log.warning("%s failed (exit %s); its output:\n%s", self.what, code, stderr)
                    raise PgToolError(f"{self.what} failed (exit {code}): {tool_failure(stderr)}")
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        """Stop spooling (the child is stopped or done); what was spooled is dropped."""
        with self._ready:
            self._closed = True
            self._chunks.clear()
            self._ready.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        super().close()


def tool_failure(stderr: str) -> str:
    """One line for a failed pg tool: its first ``error:`` and the server's own message.

    pg_dump ends its output with the command it ran (``Command was: COPY ...``); the cause is
    in the first error line and, when the server cut the connection, in its detail.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    error = next((line.split("error:", 1)[1].strip() for line in lines if "error:" in line), "")
    server = next(
        (
            line.split("Error message from server:", 1)[1].strip()
            for line in lines
            if "Error message from server:" in line
        ),
        "",
    )
    if not error:
        return final_error_line(stderr)
    return f"{error} ({server})" if server and server not in error else error


def dump_to_store(
    db: PostgresDatabase,
    store: ObjectStore,
    key: str,
    progress=None,
    compression: str = DEFAULT_COMPRESSION,
    priority: str = DEFAULT_DUMP_PRIORITY,
    started: StartedDump | None = None,
) -> DumpResult:
    """``pg_dump -Fc`` into ``store[key]``, with row counts taken in the dump's own snapshot;
    pg_dump at ``priority`` (:mod:`.dump_priority`: ``low`` beside a live server).

    ``started``: a dump of ``db`` already running (:mod:`.early_dump`: the command started it
    before Prefect was imported); its output so far is spooled and stored first."""
    if started is None:
        started = start_dump(db, compression, priority)
    try:
        return store_started_dump(started, store, key, progress)
    finally:
        started.stop()


def start_dump(
    db: PostgresDatabase,
    compression: str = DEFAULT_COMPRESSION,
    priority: str = DEFAULT_DUMP_PRIORITY,
    spool_bytes: int = STREAM_SPOOL_BYTES,
) -> StartedDump:
    """Start ``pg_dump -Fc`` of Letta's objects in ``db`` and the counts in its snapshot,
    after refusing a transaction pooler and a compression the client does not have; until it
    is stored, at most ``spool_bytes`` of its output wait in memory."""
    compression = parse_compression(compression)
    priority = parse_dump_priority(priority)
    refuse_transaction_pooler(db, "pg_dump")
    require_compression_supported(db, compression)
    return StartedDump(db, compression, priority, spool_bytes)


class StartedDump:
    """A ``pg_dump -Fc`` running in the exported snapshot of a transaction it shares with the
    row counts (running beside it on that transaction's connection), its output spooled.

    Why a thing of its own: so that a dump can start before the run that stores it (the
    command starts it while Prefect imports, :mod:`.early_dump`), and the run stores what it
    wrote so far and the rest. :meth:`stop` ends every part of it (idempotent).
    """

    def __init__(
        self,
        db: PostgresDatabase,
        compression: str,
        priority: str,
        spool_bytes: int = STREAM_SPOOL_BYTES,
    ) -> None:
        self.database, self.compression, self.priority = db, compression, priority
        self._spool_bytes = spool_bytes
        self.started_at = datetime.now(UTC)
        self.started_monotonic = time.monotonic()
        self._resources = contextlib.ExitStack()
        self.proc: subprocess.Popen | None = None
        self.output: SpooledOutput | None = None
        self._counted: Future | None = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        db = self.database
        schema = self.schema = db.db_schema or "public"
        conn = self._resources.enter_context(connect(db))
        counting = ThreadPoolExecutor(1, thread_name_prefix="counts-in-snapshot")
        self._resources.callback(counting.shutdown, wait=True)  # before the connection closes
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar()
        self.pg_version = str(conn.execute(sa.text("SHOW server_version")).scalar())
        server_major = int(conn.execute(sa.text("SHOW server_version_num")).scalar()) // 10000
        tools = client_tools(db)
        require_supported_server(server_major, tools.major())
        self.vector, self.vector_schema = conn.execute(
            sa.text(
                "SELECT e.extversion, n.nspname FROM pg_extension e "
                "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
        ).first() or (None, None)
        self.alembic_revision = revision_in_snapshot(conn)
        self.found = inventory(conn, schema, db.extra_tables)
        self.sizes = table_sizes(conn, schema, db.extra_tables)
        self._backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        self.proc = subprocess.Popen(
            tools.argv(
                "pg_dump",
                "--format=custom",
                f"--compress={self.compression}",
                f"--snapshot={snapshot}",
                "--no-password",
                *letta_only_arguments(schema, self.found.excluded_relations()),
            ),
            env=tools.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        widen_pipe(self.proc.stdout)
        self._resources.callback(self._end_process)
        # The counts run on this connection (the snapshot's own transaction) while pg_dump
        # reads the same tables: a full scan of each table, no longer before the dump but
        # beside it (PostgreSQL's synchronized scans let both read the pages once).
        self._counted = counting.submit(counts_in_snapshot, conn, schema, db.extra_tables)
        self.priority_notes = dump_priority_notes(tools, self.proc.pid, self.priority)
        self.output = SpooledOutput(self.proc, "pg_dump", StderrDrain(self.proc), self._spool_bytes)
        self._resources.callback(self._close_output)

    def _close_output(self) -> None:
        """pg_dump stopped first: a spool thread waiting on a pg_dump that writes nothing (one
        waiting for a lock) then sees the pipe end instead of waiting for its next bytes."""
        self._end_process()
        assert self.output is not None
        self.output.close()

    def counts(self) -> dict[str, int]:
        """The row counts, once the dump is stored; a failed dump need not wait for a scan."""
        assert self._counted is not None
        return self._counted.result()

    def cancel_counts(self) -> None:
        """Best effort: a dump that failed or is dropped need not wait for the counts' scan."""
        if self._counted is not None and not self._counted.done():
            _cancel_backend(self.database, self._backend)

    def _end_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Kill pg_dump if it still runs, cancel or wait for the counts, end the transaction."""
        if self.proc is not None and self.proc.poll() is None:
            self.cancel_counts()
        # Called while a failed dump's error propagates, an error closing the connection (the
        # server restarted) keeps that error as its context, so the run still says pg_dump's
        # cause (``ExitStack.close`` would cut the chain).
        self._resources.__exit__(*sys.exc_info())


def store_started_dump(
    started: StartedDump, store: ObjectStore, key: str, progress=None
) -> DumpResult:
    """Store the running dump ``started`` into ``store[key]`` (what it spooled first), then its
    counts; a dump that failed is never stored (its stream raises before the object ends)."""
    assert started.output is not None
    started.output.set_limit(STREAM_SPOOL_BYTES)  # an early dump's spool drains, then stays small
    for note in started.priority_notes:
        log.warning("%s; the dump goes on without it.", note)
    try:
        stream = io.BufferedReader(started.output, 1 << 20)
        stored = store.put_stream(key, stream, progress=progress)
        counts = started.counts()
    except BaseException:
        started.cancel_counts()
        raise
    return DumpResult(
        stored,
        counts,
        started.pg_version,
        started.vector,
        started.compression,
        started.sizes,
        pgvector_schema=started.vector_schema,
        left_out=started.found.left_alone(),
        priority_notes=started.priority_notes,
    )


def dump_priority_notes(tools: PgClientTools, pid: int, priority: str) -> list[str]:
    """Lower the local pg_dump ``pid`` to ``priority``; what could not be done, as sentences.
    Tools in a container are not this host's children: only the container can be lowered."""
    if isinstance(tools, LocalPgClientTools):
        return lower_priority(pid, priority)
    if priority == "normal":
        return []
    return [f"pg_dump runs through {tools.describe()}, so its priority is the container's"]


def _cancel_backend(db: PostgresDatabase, backend: int) -> None:
    """Best effort: cancel the counts' query (a server that is gone has ended it already)."""
    try:
        with connect(db, autocommit=True) as conn:
            conn.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": backend})
    except sa.exc.SQLAlchemyError:
        pass


def letta_only_arguments(schema: str, excluded: list[str]) -> list[str]:
    """pg_dump's selection of Letta's objects: Letta's schema only (extensions and every
    other schema stay out), without the relations of that schema that are not Letta's
    (``--exclude-table`` takes views and sequences too). Names are quoted, so a ``*`` or a
    capital in a name is taken literally, not as a pattern."""
    return [f"--schema={quote_ident(schema)}"] + [f"--exclude-table={name}" for name in excluded]


def list_dump(bin_dir: Path, dump_path: Path) -> list[str]:
    """``pg_restore --list``: the archive's table of contents; fails on a damaged archive."""
    return _toc(
        subprocess.run(
            [str(bin_dir / "pg_restore"), "--list", str(dump_path)], capture_output=True, text=True
        )
    )


def _toc(result: subprocess.CompletedProcess[str]) -> list[str]:
    if result.returncode != 0:
        raise PgToolError(f"pg_restore --list failed: {result.stderr.strip()[-2000:]}")
    return [line for line in result.stdout.splitlines() if line and not line.startswith(";")]
