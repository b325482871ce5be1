"""pg_restore into a Letta database: from a file or streamed from the store, in parallel data
lanes, with post-data work built early; the password in the environment only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa

from .client_tools import (
    PgClientTools,
    PgToolError,
    client_tools,
)
from .database import PostgresDatabase
from .dump import (
    TRANSACTION_TIMEOUT_FROM_MAJOR,
    StderrDrain,
    _toc,
    widen_pipe,
)
from .dump_lanes import StreamSpool, assign_lanes, room_for_spool
from .letta_schema import (
    connect,
)
from .pooler import refuse_transaction_pooler
from .post_data_schedule import data_started, post_data_by_table
from .restore_selection import outside_lettas_part

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreTarget:
    """What a restore must know of its target before pg_restore runs."""

    server_major: int
    extensions: frozenset[str]
    schemas: frozenset[str]
    #: Letta's schema: a dump's entries of any other schema are left out (sets written
    #: before dumps held Letta's schema only carry the whole database).
    schema: str = "public"
    #: Names of the types and routines Letta's schema already holds after its reset: the
    #: operator's (Letta's were dropped), whose definitions a dump of the schema carries
    #: along (pg_dump cannot leave them out) and which the restore must not recreate.
    kept: frozenset[str] = frozenset()

    @classmethod
    def of(cls, db: PostgresDatabase) -> RestoreTarget:
        schema = db.db_schema or "public"
        with connect(db) as conn:
            major = int(conn.execute(sa.text("SHOW server_version_num")).scalar()) // 10000
            extensions = conn.execute(sa.text("SELECT extname FROM pg_extension")).scalars()
            schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars()
            kept = conn.execute(
                sa.text(
                    "SELECT t.typname FROM pg_type t JOIN pg_namespace n "
                    "ON n.oid = t.typnamespace WHERE n.nspname = :s "
                    "UNION SELECT p.proname FROM pg_proc p JOIN pg_namespace n "
                    "ON n.oid = p.pronamespace WHERE n.nspname = :s"
                ),
                {"s": schema},
            ).scalars()
            return cls(major, frozenset(extensions), frozenset(schemas), schema, frozenset(kept))

    def listing(self, toc: list[str]) -> str:
        """The ``--use-list`` file's text: the TOC without what the target already has, and
        without anything outside Letta's schema."""
        keep = [
            line
            for line in toc
            if not _exists_in_target(line, self.extensions, self.schemas)
            and not outside_lettas_part(line, self.schema, self.kept)
        ]
        return "\n".join(keep) + "\n"

    def tolerated(self, returncode: int, stderr: str) -> list[str]:
        """The expected errors of a finished pg_restore; raises on any other."""
        errors = restore_errors(stderr)
        real = [e for e in errors if not expected_restore_error(e, self.server_major)]
        if real or (returncode != 0 and not errors):
            raise PgToolError(f"pg_restore failed: {' | '.join(real or [stderr.strip()])[:2000]}")
        return [e.splitlines()[0] for e in errors]


#: pg_restore options every restore uses: the target's roles need not match the source's.
RESTORE_OPTIONS = ("--no-owner", "--no-privileges", "--no-password")


def restore_dump(
    db: PostgresDatabase, dump_path: Path, jobs: int = 1, toc: list[str] | None = None
) -> list[str]:
    """Restore a custom-format dump into ``db`` (emptied by ``empty_database``); returns the
    expected errors it tolerated.

    ``--no-owner`` because the target's roles need not match the source's. Entries for
    extensions and schemas that already exist in the target are left out of the restore (a
    role that is not their owner may not even comment on them), so every error pg_restore
    reports is real, except ``SET transaction_timeout`` on a server older than 17.
    """
    refuse_transaction_pooler(db, "pg_restore", probe=False)
    target = RestoreTarget.of(db)
    tools = client_tools(db)
    with tempfile.TemporaryDirectory(prefix="letta-ops-restore-") as work:
        listing = Path(work) / "restore.list"
        with tools.staged(dump_path) as dump:
            if toc is None:  # the caller's, when it read the archive's table of contents
                toc = _toc(tools.run("pg_restore", "--list", dump))
            listing.write_text(target.listing(toc))
            with tools.staged(listing) as use_list:
                args = [*RESTORE_OPTIONS, f"--use-list={use_list}", "-d", db.database_name]
                if jobs > 1:
                    args += ["--jobs", str(jobs)]
                result = tools.run("pg_restore", *args, dump)
    return target.tolerated(result.returncode, result.stderr)


@dataclass(frozen=True)
class StreamedRestore:
    """A restore that read its dump as it arrived: what it tolerated, what it read, and in
    how many lanes its tables loaded."""

    warnings: list[str]
    sha256: str
    size: int
    lanes: int = 1


def restore_dump_streaming(
    db: PostgresDatabase,
    stream: BinaryIO,
    head: Path,
    toc: list[str],
    jobs: int = 1,
    chunk_size: int = 1 << 20,
    weights: Mapping[str, int] | None = None,
    spool_bytes: int | None = None,
) -> StreamedRestore:
    """Restore a custom-format dump into ``db`` *while it downloads*: tables and their rows
    as the stream arrives, each table's indexes as soon as its rows are in, and the remaining
    indexes and constraints at the end with ``jobs`` workers.

    Why: downloading a dump and then restoring it costs both times; a restore that reads the
    download as it arrives costs about the slower of the two. Only the data section needs the
    archive's bytes, and pg_restore reads it on its standard input, in order, as pg_dump wrote
    it. The pre-data section (tables, types) and the post-data section (indexes, constraints)
    need only the table of contents: both run from ``head``, the dump's first bytes, which
    were fetched to read ``toc`` and must equal the stream's. A table's own indexes and keys
    are built while the next tables load (:mod:`letta_ops.tasks.postgres.post_data_schedule`), as
    ``pg_restore -j`` does from a file. With ``jobs`` > 1 and rows in more than one table
    (``weights``: each table's size, or its row count), tables load in up to ``jobs`` lanes that
    follow one local spool of the stream (:mod:`letta_ops.tasks.postgres.dump_lanes`), when the
    temporary directory has room for ``spool_bytes`` (the dump's size); with one lane nothing
    of the dump touches the local disk. The stream is hashed as it passes.

    ``db`` must be a database that holds nothing to lose (a drill's scratch database, or a
    new one swapped in only after this returns and the caller compared the digest with the
    manifest): the rows go in before the last byte has been checked.
    """
    refuse_transaction_pooler(db, "pg_restore", probe=False)
    target = RestoreTarget.of(db)
    tools = client_tools(db)
    expected_head = head.read_bytes()  # the TOC: a few hundred KiB whatever the dump's size
    pool = ThreadPoolExecutor(max(1, jobs - 1), thread_name_prefix="early-post-data")
    with (
        tempfile.TemporaryDirectory(prefix="letta-ops-restore-") as work,
        ExitStack() as staged,
        _shut(pool),  # before the staged files go: a running build reads the head
    ):
        listing = target.listing(toc).splitlines()
        use_list = staged.enter_context(tools.staged(_list_file(work, "restore", listing)))
        staged_head = staged.enter_context(tools.staged(head))
        target_args = [*RESTORE_OPTIONS, "-d", db.database_name]
        base = [*target_args, f"--use-list={use_list}"]
        # The post-data section is read (listed and scripted) while pre-data runs: both
        # only read the head, and neither waits on the server.
        with ThreadPoolExecutor(2, thread_name_prefix="post-data-read") as readers:
            post_toc = readers.submit(
                tools.run, "pg_restore", "--list", "--section=post-data", staged_head
            )
            post_script = readers.submit(
                tools.run, "pg_restore", "--section=post-data", "-f", "-", staged_head
            )
            result = tools.run("pg_restore", *base, "--section=pre-data", staged_head)
            schedule = post_data_by_table(_toc(post_toc.result()), _script(post_script.result()))
        warnings = target.tolerated(result.returncode, result.stderr)

        def build(lines: list[str]) -> list[str]:
            return _restore_listed(tools, target, target_args, work, lines, staged_head)

        plan = assign_lanes(listing, jobs, weights or {})
        if len(plan) > 1 and not room_for_spool(Path(work), spool_bytes):
            log.warning(
                "No room for a %s-byte spool of the dump in %s; its tables load in one lane "
                "(slower, nothing on disk). Set TMPDIR to a larger disk for parallel lanes.",
                spool_bytes,
                work,
            )
            plan = [listing]
        lanes: list[DataLane] = []
        for number, lines in enumerate(plan):
            lane_list = use_list
            if lines != listing:
                lane_file = _list_file(work, f"data-{number}", lines)
                lane_list = staged.enter_context(tools.staged(lane_file))
            early = EarlyIndexBuilds(schedule, build, pool)
            argv = [*target_args, f"--use-list={lane_list}", "--verbose", "--section=data"]
            lanes.append(DataLane(tools.argv("pg_restore", *argv), tools.env(), early))
        source = CheckedStream(stream, chunk_size, expected_head)
        try:
            failed_first = _feed_lanes(lanes, source, Path(work) / "stream.spool")
        finally:
            for lane in lanes:
                lane.kill()
        stderr = {lane: lane.stderr.text() for lane in lanes}  # every progress line is read
        # Every row is in: no early build starts now, in any lane (see EarlyIndexBuilds.finish).
        pool.shutdown(wait=False, cancel_futures=True)
        built: set[str] = set()
        # The lane that failed first speaks first: the others were cut off because it failed,
        # and their "unexpected end of file" is not the cause.
        for lane in sorted(lanes, key=lambda lane: lane is not failed_first):
            warnings += target.tolerated(lane.proc.returncode, stderr[lane])
            warnings += lane.early.finish()
            built |= lane.early.built
        rest = [line for line in listing if line not in built]
        warnings += _restore_listed(tools, target, target_args, work, rest, staged_head, jobs)
    return StreamedRestore(warnings, source.digest.hexdigest(), source.size, len(lanes))


class DataLane:
    """One ``pg_restore --section=data`` reading a dump on its standard input; its progress
    starts the early index builds of the tables it loads (``early``)."""

    def __init__(self, argv: list[str], env: dict[str, str], early: EarlyIndexBuilds) -> None:
        self.early = early
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        widen_pipe(self.proc.stdin)
        self.stderr = StderrDrain(self.proc, early.progress)

    def feed(self, chunks: Iterable[bytes]) -> None:
        """Write ``chunks`` until they end or pg_restore stops reading: it loaded its last
        table and left, or it failed (its exit code says which)."""
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            for chunk in chunks:
                stdin.write(chunk)
            stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            self.proc.kill()  # never a lane left waiting for bytes nobody sends: it fails
            raise

    def failed(self) -> bool:
        return self.proc.poll() not in (None, 0)

    def kill(self) -> None:
        """Only if still running (after a failure elsewhere): never leave a child behind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class CheckedStream:
    """The stream's chunks, hashed as they pass (``digest``, ``size``); its first bytes
    must equal ``head``."""

    def __init__(self, stream: BinaryIO, chunk_size: int, head: bytes) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self._chunks = self._read(stream, chunk_size, head)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def _read(self, stream: BinaryIO, chunk_size: int, head: bytes) -> Iterator[bytes]:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            if self.size < len(head):
                _require_same_head(head, self.size, chunk)
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk


def _feed_lanes(lanes: list[DataLane], source: CheckedStream, spool_path: Path) -> DataLane | None:
    """Feed every lane the whole stream. One lane reads the stream itself; several follow a
    spool of it, each in a thread of its own. The stream is read to its end (its digest must
    cover every byte) unless a lane failed; then the spool ends there, and the lane seen
    failing first is returned."""
    if len(lanes) == 1:
        lanes[0].feed(source)
        if lanes[0].proc.wait() == 0:
            for _ in source:  # it left after its last table: the rest is still hashed
                pass
        return None  # nothing to order
    failed: DataLane | None = None
    spool = StreamSpool(spool_path)
    feeders = [threading.Thread(target=lane.feed, args=(spool.chunks(),)) for lane in lanes]
    for feeder in feeders:
        feeder.start()
    try:
        for chunk in source:
            spool.append(chunk)
            failed = next((lane for lane in lanes if lane.failed()), None)
            if failed is not None:
                break  # its stderr says why, below; no need to download the rest
    except BaseException:
        for lane in lanes:  # a feeder never waits on a lane that will not read again
            lane.kill()
        raise
    finally:
        spool.close()
        for feeder in feeders:
            feeder.join()
    for lane in lanes:
        lane.proc.wait()
    return failed


class EarlyIndexBuilds:
    """A table's own keys and indexes, built (by ``build``, in ``pool``) once pg_restore's
    progress shows it moved on to the next table; :meth:`finish` waits for the builds
    already running and takes back the rest. ``built`` (set by :meth:`finish`) holds the TOC
    lines of the builds that ran, which the final step leaves out.
    """

    def __init__(
        self,
        schedule: dict[str, list[str]],
        build: Callable[[list[str]], list[str]],
        pool: ThreadPoolExecutor,
    ) -> None:
        self.schedule, self.build, self.pool = schedule, build, pool
        self.built: set[str] = set()
        self._started: list[tuple[list[str], Future[list[str]]]] = []
        self._loading: str | None = None

    def progress(self, line: str) -> None:
        """A line of ``pg_restore --verbose``: when a table's rows start, the previous
        table's are in."""
        table = data_started(line)
        if table is not None:
            self._rows_are_in(self._loading)
            self._loading = table

    def finish(self) -> list[str]:
        """After the data run (its progress read to the end): the warnings of the builds that
        ran. Builds still queued are cancelled and left out of ``built``, and the last table's is
        never queued: once the rows are in, the final step builds all of them in one
        pg_restore with every worker, where one process per small table queued behind one
        worker cost a second on a Letta database of 40 tables."""
        # Every queued build is cancelled before any is waited for.
        running = [(lines, f) for lines, f in self._started if not f.cancel()]
        self.built = {line for lines, _ in running for line in lines}
        return [warning for _, future in running for warning in future.result()]

    def _rows_are_in(self, table: str | None) -> None:
        lines = self.schedule.pop(table, None) if table else None
        if lines:
            self._started.append((lines, self.pool.submit(self.build, lines)))


def _restore_listed(
    tools: PgClientTools,
    target: RestoreTarget,
    target_args: list[str],
    work: str,
    lines: list[str],
    archive: str,
    jobs: int = 1,
) -> list[str]:
    """Restore the post-data entries among ``lines`` of ``archive`` (``jobs`` workers); the
    errors allowed."""
    listed = _list_file(work, f"post-data-{uuid.uuid4().hex[:8]}", lines)
    args = [*target_args, "--section=post-data"] + (["--jobs", str(jobs)] if jobs > 1 else [])
    with tools.staged(listed) as use_list:
        result = tools.run("pg_restore", *args, f"--use-list={use_list}", archive)
    return target.tolerated(result.returncode, result.stderr)


@contextmanager
def _shut(pool: ThreadPoolExecutor) -> Iterator[ThreadPoolExecutor]:
    """Shut ``pool`` down on the way out: builds not started yet are cancelled after a
    failure; a running one is waited for (it is a pg_restore in the same database)."""
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _list_file(work: str, name: str, lines: list[str]) -> Path:
    """A ``--use-list`` file of ``lines`` in ``work``."""
    path = Path(work) / f"{name}.list"
    path.write_text("\n".join(lines) + "\n")
    return path


def _script(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise PgToolError(f"pg_restore -f - failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _require_same_head(head: bytes, offset: int, chunk: bytes) -> None:
    """The stream's bytes at ``offset`` must be the head's: the pre- and post-data sections
    come from the head, the rows from the stream, and both must be the same archive."""
    expected = head[offset : offset + len(chunk)]
    if chunk[: len(expected)] != expected:
        raise PgToolError(
            "The dump's first bytes differ between two reads of the same object (it was "
            "replaced or the store answered wrongly); run the restore again."
        )


def _exists_in_target(toc_line: str, extensions: set[str], schemas: set[str]) -> bool:
    """A TOC entry creating (or commenting on) an extension or schema the target has."""
    parts = toc_line.split()
    # "<id>; <oids...> EXTENSION - vector", "<id>; 0 0 COMMENT - EXTENSION vector",
    # "<id>; ... SCHEMA - letta <owner>", "<id>; 0 0 COMMENT - SCHEMA letta <owner>"
    for kind, names in (("EXTENSION", extensions), ("SCHEMA", schemas)):
        if kind in parts:
            i = parts.index(kind)
            if parts[i + 1 : i + 2] == ["-"] and parts[i + 2 : i + 3] and parts[i + 2] in names:
                return True
            if parts[i - 2 : i] == ["COMMENT", "-"] and parts[i + 1 : i + 2]:
                return parts[i + 1] in names
    return False


def restore_errors(stderr: str) -> list[str]:
    """pg_restore's errors, each with its ``Command was:`` lines (one string per error)."""
    errors: list[str] = []
    in_error = False
    for line in stderr.splitlines():
        if line.startswith("pg_restore: "):
            in_error = line.startswith("pg_restore: error:")
            if in_error:
                errors.append(line)
        elif in_error and line.strip():
            errors[-1] += "\n" + line
    return errors


def expected_restore_error(error: str, server_major: int) -> bool:
    """Only ``SET transaction_timeout`` refused by a server that predates it."""
    return (
        server_major < TRANSACTION_TIMEOUT_FROM_MAJOR
        and 'unrecognized configuration parameter "transaction_timeout"' in error
        and "Command was: SET transaction_timeout = 0;" in error
    )


_TABLE_DATA = re.compile(r"TABLE DATA (\S+) (\S+)")


def tables_in_dump(toc: list[str]) -> set[str]:
    return {m.group(2) for line in toc if (m := _TABLE_DATA.search(line))}
