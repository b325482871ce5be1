"""Prove a backup set restorable: checksums, the dump's table of contents, and a drill.

Why three levels: checksums catch bit rot and tampering in storage; ``pg_restore --list``
catches a truncated or damaged archive; only a drill (restore into a scratch database and
compare per-table counts with the manifest) proves the set actually restores.

Why checksums cost one metadata request on S3: the store computed a SHA-256 over the bytes it
holds when they were uploaded, the manifest recorded it, and any later write of the key
replaces it. Reading everything back (``read_data``, restic's ``--read-data``) is still there
for when the store itself is not trusted; objects without a recorded store checksum (local
directories, older sets) are always read back.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..postgres.client_tools import PgToolError
from ..postgres.database import PostgresDatabase, default_pg_bin_dir
from ..postgres.dump import list_dump
from ..postgres.letta_schema import (
    create_database,
    drop_database,
    reset_schema_in_place,
    table_row_counts,
)
from ..postgres.privileges import (
    PrivilegeRefused,
    choose_reset_mode,
    probe_privileges,
    recreate_blockers,
)
from ..postgres.restore import restore_dump, restore_dump_streaming, tables_in_dump
from ..store.encryption import stored_form
from ..store.objects import ObjectChanged, ObjectStore
from .manifest import BackupManifest, ManifestObject

#: pg_restore --list reads a custom-format archive's header and table of contents only, and
#: both come first: this much is fetched first (a Letta 0.16 schema's TOC is about 130 KB),
#: four times more while pg_restore finds it too short, at most the whole dump.
TOC_FIRST_READ = 256 * 1024
TOC_READ_GROWTH = 4
#: Objects are checked this many at a time: a metadata request is nearly all round-trip time.
CHECK_WORKERS = 8


def reads_back(expected: ManifestObject, read_data: bool) -> bool:
    """Whether verification reads the object back rather than asking the store's checksum."""
    return read_data or expected.store_checksum is None


def check_objects(
    store: ObjectStore, manifest: BackupManifest, read_data: bool = False
) -> list[dict]:
    """Check every object the manifest lists; return one problem per bad object.

    An object with a recorded store checksum costs one metadata request (size and checksum);
    the others, and every object with ``read_data``, are read back and hashed. What is
    checked is what the store holds -- the ciphertext of an encrypted set -- so this needs no
    key; decrypting authenticates the content on top (the dump's TOC, every restore).
    """
    store = stored_form(store)
    items = sorted(manifest.objects.items())
    with ThreadPoolExecutor(CHECK_WORKERS, thread_name_prefix="check-object") as pool:
        found = list(pool.map(lambda item: _object_problem(store, *item, read_data), items))
    return [
        {"object": key, "problem": problem}
        for (key, _), problem in zip(items, found, strict=True)
        if problem
    ]


def _object_problem(
    store: ObjectStore, key: str, expected: ManifestObject, read_data: bool
) -> str | None:
    check = _problem_read_back if reads_back(expected, read_data) else _problem_in_metadata
    try:
        return check(store, key, expected)
    except FileNotFoundError:
        return "missing"
    except ObjectChanged:
        return "rewritten after the set was written (the store's ETag differs from the manifest's)"


def _problem_read_back(store: ObjectStore, key: str, expected: ManifestObject) -> str | None:
    actual = store.hash_object(key)
    if actual.size != expected.stored_bytes:
        return f"size {actual.size} != manifest {expected.stored_bytes}"
    if actual.sha256 != expected.stored_digest:
        return "sha256 differs from the manifest"
    return None


def _problem_in_metadata(store: ObjectStore, key: str, expected: ManifestObject) -> str | None:
    actual = store.metadata(key)
    if actual.size != expected.stored_bytes:
        return f"size {actual.size} != manifest {expected.stored_bytes}"
    recorded = expected.store_checksum
    assert recorded is not None  # objects without one are read back
    if not recorded.matches(actual.store_checksum):
        found = actual.store_checksum
        return (
            f"the store's {recorded.algorithm} checksum differs from the manifest"
            if found is not None and found.algorithm == recorded.algorithm
            else f"the store no longer reports the {recorded.algorithm} checksum the manifest "
            "recorded (the object was rewritten)"
        )
    return None


@contextmanager
def downloaded(store: ObjectStore, key: str, expected_sha256: str | None = None) -> Iterator[Path]:
    """The object in a temporary file, checked against its sha256 (S3 fetches large objects
    in parallel byte ranges: :meth:`ObjectStore.download_to`)."""
    with tempfile.TemporaryDirectory(prefix="letta-ops-dump-") as tmp:
        path = Path(tmp) / "database.dump"
        fetched = store.download_to(key, path)
        if expected_sha256 and fetched.sha256 != expected_sha256:
            raise PgToolError(f"{key} does not match its sha256 in the manifest.")
        # The decrypted dump is the whole database: readable by this user alone (the
        # directory is 0700 as mkdtemp makes it).
        path.chmod(0o600)
        yield path


@dataclass(frozen=True)
class DumpHead:
    """The first bytes of a set's dump (in ``path``), the table of contents they hold, and
    the whole dump as one stream (``stream``: those bytes again, then the rest of the same
    read)."""

    path: Path
    toc: list[str]
    stream: BinaryIO
    #: ``path`` holds the whole dump, already proven equal to the manifest's sha256 (a
    #: plaintext set is downloaded and checked before any SQL runs from it).
    whole: bool = False


class HeadThenRest:
    """The bytes already read from a stream, then the rest of it: the restore reads the dump
    from its first byte (its digest covers every byte) on the read that fetched the head."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        taken = self._head if size < 0 else self._head[:size]
        self._head = self._head[len(taken) :]
        return bytes(taken)


@contextmanager
def dump_head(store: ObjectStore, manifest: BackupManifest) -> Iterator[DumpHead]:
    """The set's dump's first bytes and table of contents (decrypted when the set is
    encrypted: a wrong key fails here, before anything is created or emptied), in a
    temporary file for as long as the restore needs it, and the dump's one read, open.

    Why keep them: pg_restore's pre-data and post-data sections need only the table of
    contents, so a streamed restore runs them from this file and reads the stream once, for
    the rows (see :func:`letta_ops.tasks.postgres.dump.restore_dump_streaming`). Why one
    read: a second GET costs a round trip, and some stores (moto) read the whole object to
    answer a ranged one.
    """
    expected = manifest.objects.get(manifest.dump)
    if manifest.encryption is None:
        # Plaintext: nothing authenticates the bytes as they arrive, so no SQL runs from them
        # until all of them match the manifest's sha256 (which the manifest's MAC covers).
        with downloaded(store, manifest.dump, expected.sha256 if expected else None) as path:
            toc = list_dump(default_pg_bin_dir(), path)
            with path.open("rb") as stream:
                yield DumpHead(path, toc, stream, whole=True)
        return
    size = expected.size if expected else store.metadata(manifest.dump).size
    with (
        tempfile.TemporaryDirectory(prefix="letta-ops-toc-") as tmp,
        store.open_read(manifest.dump) as stream,
    ):
        path = Path(tmp) / "head.dump"  # 0700 directory: the head is part of the database
        toc, _ = _read_toc(
            lambda have, want: _read_up_to(stream, want - have), size, default_pg_bin_dir(), path
        )
        path.chmod(0o600)
        yield DumpHead(path, toc, HeadThenRest(path.read_bytes(), stream))


def restore_set_dump(
    manifest: BackupManifest, db: PostgresDatabase, head: DumpHead, jobs: int = 2
) -> list[str]:
    """Restore the set's dump into ``db`` while it downloads (the one sequential read that
    ``head`` holds, decrypted and authenticated frame by frame when encrypted); returns the
    errors pg_restore was allowed. The sha256 of every byte read must equal the manifest's.

    ``db`` must hold nothing to lose (a scratch database, or one swapped in afterwards):
    see :func:`letta_ops.tasks.postgres.dump.restore_dump_streaming`.
    """
    if head.whole:
        # The whole dump is here and checked: pg_restore -j reads it as it reads any file,
        # its data in parallel and each table's indexes as soon as its rows are in; a
        # stream fed through a spool to data lanes only adds a copy and a hash of it.
        return restore_dump(db, head.path, jobs, toc=head.toc)
    expected = manifest.objects.get(manifest.dump)
    restored = restore_dump_streaming(
        db,
        head.stream,
        head.path,
        head.toc,
        jobs,
        weights=manifest.table_bytes or manifest.row_counts,
        spool_bytes=expected.size if expected else None,
    )
    if expected and (restored.sha256, restored.size) != (expected.sha256, expected.size):
        raise PgToolError(f"{manifest.dump} does not match its sha256 in the manifest.")
    return restored.warnings


def check_dump(store: ObjectStore, manifest: BackupManifest, bin_dir: Path | None = None) -> dict:
    """``pg_restore --list`` on the dump; every table the manifest counts must be in it.

    Only the archive's table of contents is read (see :data:`TOC_FIRST_READ`): the dump's
    bytes are proven by :func:`check_objects`, the TOC by pg_restore.
    """
    expected = manifest.objects.get(manifest.dump)
    size = expected.size if expected else store.metadata(manifest.dump).size
    toc, bytes_read = read_dump_toc(store, manifest.dump, size, bin_dir or default_pg_bin_dir())
    tables = tables_in_dump(toc)
    missing = sorted(t for t, n in manifest.row_counts.items() if n and t not in tables)
    return {
        "toc_entries": len(toc),
        "tables_with_data": len(tables),
        "tables_missing": missing,
        "bytes_read": bytes_read,
    }


def read_dump_toc(
    store: ObjectStore, key: str, size: int, bin_dir: Path, keep: Path | None = None
) -> tuple[list[str], int]:
    """``pg_restore --list`` on the shortest fetched prefix of the dump that holds its table
    of contents (ranged reads); returns the TOC and how many bytes were read (the prefix stays
    in ``keep`` when given). A damaged archive fails with pg_restore's error once the whole
    dump has been read."""

    def fetch(have: int, want: int) -> Iterator[bytes]:
        with store.open_read(key, start=have, length=want - have) as source:
            yield from _read_up_to(source, want - have)

    with tempfile.TemporaryDirectory(prefix="letta-ops-toc-") as tmp:
        return _read_toc(fetch, size, bin_dir, keep or Path(tmp) / "database.dump")


def _read_toc(
    fetch: Callable[[int, int], Iterable[bytes]], size: int, bin_dir: Path, path: Path
) -> tuple[list[str], int]:
    """Fetch bytes ``have`` to ``want`` of the dump into ``path`` until pg_restore lists it:
    256 KiB first, four times as much each time it finds them too short."""
    have = 0
    with path.open("wb") as out:
        while True:
            want = min(size, max(TOC_FIRST_READ, have * TOC_READ_GROWTH))
            for chunk in fetch(have, want):
                out.write(chunk)
                have += len(chunk)
            out.flush()
            try:
                return list_dump(bin_dir, path), have
            except PgToolError:
                if have >= size or have < want:  # all of it, or all the store has
                    raise


def _read_up_to(source: BinaryIO, count: int) -> Iterator[bytes]:
    """Chunks of at most 1 MiB from ``source``, ``count`` bytes in all unless it ends first."""
    while count > 0 and (chunk := source.read(min(count, 1 << 20))):
        count -= len(chunk)
        yield chunk


#: How a caller times a step: ``with phase("name"): ...`` (a flow's ``PhaseClock.phase``).
Phase = Callable[[str], contextlib.AbstractContextManager[None]]


def no_phase(_name: str) -> contextlib.AbstractContextManager[None]:
    """The phase timer of a caller that does not time phases."""
    return contextlib.nullcontext()


@contextlib.contextmanager
def scratch_database(
    target: PostgresDatabase,
    schema: str,
    dedicated: bool,
    purpose: str = "drill",
    manifest: BackupManifest | None = None,
    phase: Phase = no_phase,
) -> Iterator[tuple[PostgresDatabase, bool]]:
    """A database to restore a copy into, on ``target``'s server, gone again afterwards.

    A new database (dropped after) when the role may create one; else, when ``target`` is
    ``dedicated`` to such copies (``LETTA_OPS_DRILL_PG_URI``, managed PostgreSQL), that
    database with Letta's schema reset in place before and after. Yields the database and
    whether it is the dedicated one. With the ``manifest`` of the set to restore, a new
    database gets pgvector in the schema the set's had (a dump names pgvector's type by it),
    and a reset in place takes the set's tables too. ``phase`` times making it ready
    ("scratch database") and getting rid of it ("drop scratch database").
    """
    vector_schema = manifest.pgvector_schema if manifest else None
    also = list(manifest.row_counts) if manifest else []
    with phase("scratch database"):
        scratch, cleanup = _ready_scratch(target, schema, dedicated, purpose, vector_schema, also)
    try:
        yield scratch, cleanup is not drop_database
    finally:
        with phase("drop scratch database"):
            cleanup(scratch)


def _ready_scratch(
    target: PostgresDatabase,
    schema: str,
    dedicated: bool,
    purpose: str,
    vector_schema: str | None,
    also: list[str],
) -> tuple[PostgresDatabase, Callable[[PostgresDatabase], None]]:
    """The scratch database of :func:`scratch_database`, made ready, and how to clean it up."""

    def reset(db: PostgresDatabase) -> None:
        reset_schema_in_place(db, also)

    facts = probe_privileges(target)
    if not recreate_blockers(facts):
        scratch = target.for_database(f"letta_ops_{purpose}_{uuid.uuid4().hex[:10]}")
        if schema != "public":
            scratch = scratch.model_copy(update={"db_schema": schema})
        create_database(scratch, with_pgvector=True, pgvector_schema=vector_schema)
        cleanup = drop_database
    elif dedicated:
        scratch = target
        if schema != "public":
            scratch = scratch.model_copy(update={"db_schema": schema})
        choose_reset_mode(probe_privileges(scratch), "in-place")
        reset(scratch)
        cleanup = reset
    else:
        raise PrivilegeRefused(
            f"A {purpose} needs a scratch database, but role {facts.role} cannot create one "
            f"({recreate_blockers(facts)[0]}); set LETTA_OPS_DRILL_PG_URI to a database of its "
            "own for drills (ask your admin once: CREATE DATABASE letta_drill OWNER "
            f"{facts.role}; then CREATE EXTENSION vector in it)."
        )
    return scratch, cleanup


def drill(
    store: ObjectStore,
    manifest: BackupManifest,
    target: PostgresDatabase,
    jobs: int = 2,
    dedicated: bool = False,
    phase: Phase = no_phase,
) -> dict:
    """Restore the dump into a scratch database on ``target``'s server, compare, drop it.

    ``target`` only says which PostgreSQL server and credentials to use; its own database is
    never touched, unless it is ``dedicated`` to drills (``LETTA_OPS_DRILL_PG_URI``) and the
    role may not create databases (managed PostgreSQL): then the drill resets that database's
    schema in place, restores into it, and empties it again afterwards.

    ``phase`` (a flow's ``PhaseClock.phase``) times its steps: the dump's head, the scratch
    database, the streamed restore (download, pre-data, data and post-data together), the
    counts, and dropping the scratch database.
    """
    # The table of contents is read (decrypted and authenticated) before the scratch database
    # exists: a wrong key or a damaged archive header never gets as far as creating one. The
    # rest restores while it downloads: the scratch database holds nothing to lose.
    with contextlib.ExitStack() as steps:
        with phase("dump head"):
            head = steps.enter_context(dump_head(store, manifest))
        scratch, in_place = steps.enter_context(
            scratch_database(target, manifest.db_schema, dedicated, "drill", manifest, phase)
        )
        with phase("stream restore"):
            warnings = restore_set_dump(manifest, scratch, head, jobs)
        with phase("counts"):
            counts = table_row_counts(scratch, manifest.row_counts)
    differences = compare_counts(manifest.row_counts, counts)
    return {
        "scratch_database": scratch.database_name,
        "in_place": in_place,
        "tables": len(counts),
        "differences": differences,
        "restore_warnings": warnings,
    }


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[dict]:
    """Tables whose row count differs (or that exist on one side only)."""
    return [
        {"table": t, "expected": expected.get(t), "actual": actual.get(t)}
        for t in sorted(set(expected) | set(actual))
        if expected.get(t) != actual.get(t)
    ]


def server_against_set(
    version: str, agents: dict[str, str], counts: dict[str, int], manifest: BackupManifest
) -> dict:
    """The proof that a started server is where a set was: its version, its agents (id ->
    name) and its per-table counts against the manifest's. One reading, whatever the server's
    database (PostgreSQL or SQLite), so both say "where the set was" alike."""
    expected = {a.id: a.name for a in manifest.agents}
    differences = compare_counts(manifest.row_counts, counts)
    return {
        "ok": version == manifest.letta_version and not differences and agents == expected,
        "version": version,
        "agents": len(agents),
        "agents_equal": agents == expected,
        "agents_missing": sorted(set(expected) - set(agents)),
        "agents_unexpected": sorted(set(agents) - set(expected)),
        "count_differences": differences,
    }
