"""Prove a backup set restorable: checksums, the dump's table of contents, and a drill.

Why three levels: checksums catch bit rot and tampering in storage; ``pg_restore --list``
catches a truncated or damaged archive; only a drill (restore into a scratch database and
compare per-table counts with the manifest) proves the set actually restores.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blocks.letta_database import LettaDatabase, default_pg_bin_dir
from tasks.backup_manifest import BackupManifest
from tasks.letta_postgres import (
    create_database,
    drop_database,
    reset_schema_in_place,
    table_row_counts,
)
from tasks.object_store import ObjectStore
from tasks.postgres_dump import PgToolError, list_dump, restore_dump, tables_in_dump
from tasks.postgres_privileges import (
    PrivilegeRefused,
    choose_reset_mode,
    probe_privileges,
    recreate_blockers,
)


def check_objects(store: ObjectStore, manifest: BackupManifest) -> list[dict]:
    """Re-read every object the manifest lists; return one problem per bad object."""
    problems = []
    for key, expected in sorted(manifest.objects.items()):
        try:
            actual = store.hash_object(key)
        except FileNotFoundError:
            problems.append({"object": key, "problem": "missing"})
            continue
        if actual.size != expected.size:
            problems.append(
                {"object": key, "problem": f"size {actual.size} != manifest {expected.size}"}
            )
        elif actual.sha256 != expected.sha256:
            problems.append({"object": key, "problem": "sha256 differs from the manifest"})
    return problems


@contextmanager
def downloaded(store: ObjectStore, key: str, expected_sha256: str | None = None) -> Iterator[Path]:
    """The object in a temporary file (streamed), checked against its sha256."""
    with tempfile.TemporaryDirectory(prefix="letta-ops-dump-") as tmp:
        path = Path(tmp) / "database.dump"
        digest = hashlib.sha256()
        with store.open_read(key) as src, path.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise PgToolError(f"{key} does not match its sha256 in the manifest.")
        path.chmod(0o644)
        Path(tmp).chmod(0o755)
        yield path


def check_dump(store: ObjectStore, manifest: BackupManifest, bin_dir: Path | None = None) -> dict:
    """``pg_restore --list`` on the dump; every table the manifest counts must be in it."""
    expected = manifest.objects.get(manifest.dump)
    with downloaded(store, manifest.dump, expected.sha256 if expected else None) as path:
        toc = list_dump(bin_dir or default_pg_bin_dir(), path)
    tables = tables_in_dump(toc)
    missing = sorted(t for t, n in manifest.row_counts.items() if n and t not in tables)
    return {"toc_entries": len(toc), "tables_with_data": len(tables), "tables_missing": missing}


def drill(
    store: ObjectStore,
    manifest: BackupManifest,
    target: LettaDatabase,
    jobs: int = 2,
    dedicated: bool = False,
) -> dict:
    """Restore the dump into a scratch database on ``target``'s server, compare, drop it.

    ``target`` only says which PostgreSQL server and credentials to use; its own database is
    never touched, unless it is ``dedicated`` to drills (``LETTA_OPS_DRILL_PG_URI``) and the
    role may not create databases (managed PostgreSQL): then the drill resets that database's
    schema in place, restores into it, and empties it again afterwards.
    """
    facts = probe_privileges(target)
    if not recreate_blockers(facts):
        scratch = target.for_database(f"letta_ops_drill_{uuid.uuid4().hex[:10]}")
        if manifest.db_schema != "public":
            scratch = scratch.model_copy(update={"db_schema": manifest.db_schema})
        create_database(scratch, with_pgvector=True)
        cleanup = drop_database
    elif dedicated:
        scratch = target
        if manifest.db_schema != "public":
            scratch = scratch.model_copy(update={"db_schema": manifest.db_schema})
        choose_reset_mode(probe_privileges(scratch), "in-place")
        reset_schema_in_place(scratch)
        cleanup = reset_schema_in_place
    else:
        raise PrivilegeRefused(
            f"A drill needs a scratch database, but role {facts.role} cannot create one "
            f"({recreate_blockers(facts)[0]}); set LETTA_OPS_DRILL_PG_URI to a database of its "
            "own for drills (ask your admin once: CREATE DATABASE letta_drill OWNER "
            f"{facts.role}; then CREATE EXTENSION vector in it)."
        )
    try:
        expected = manifest.objects.get(manifest.dump)
        with downloaded(store, manifest.dump, expected.sha256 if expected else None) as path:
            warnings = restore_dump(scratch, path, jobs=jobs)
        counts = table_row_counts(scratch)
    finally:
        cleanup(scratch)
    differences = compare_counts(manifest.row_counts, counts)
    return {
        "scratch_database": scratch.database_name,
        "in_place": cleanup is reset_schema_in_place,
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
