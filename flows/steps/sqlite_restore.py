"""Put a SQLite set back under a stopped server, start the set's version, prove it.

Why apart from restore_server.py: a PostgreSQL restore empties a database and runs
pg_restore; a SQLite server's database is one file, so its restore is a download, a check by
SQLite itself, and an atomic replacement (tasks/sqlite/file_swap.py). The proof is the same:
the version, the agents (id -> name) and every table's count equal the manifest's.

The copy is downloaded beside the live file and checked (sha256, ``integrity_check``, every
table's count) *before* the live file is touched: a damaged set or a wrong key leaves the
server's file exactly as it was.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ...blocks.server_profile import ServerProfile
from ...tasks.errors import Failed, Refused, database_error_message
from ...tasks.letta.api import LettaClient
from ...tasks.sets.admission import require_key
from ...tasks.sets.manifest import BackupManifest
from ...tasks.sets.verification import compare_counts, server_against_set
from ...tasks.sqlite.database import SqliteDatabase, require_serves_sqlite
from ...tasks.sqlite.file_swap import incoming_path, swap_in
from ...tasks.sqlite.online_copy import integrity_problems, table_counts
from ...tasks.sqlite.restore_target import prepare_directory
from ...tasks.store.objects import ObjectStore


class SqliteSetRefused(Refused):
    """The set cannot go under this server: another engine, or a version past SQLite."""


class SqliteCopyRejected(Failed):
    """The downloaded copy is not what the manifest promises; the live file was kept."""


def require_set_fits(profile: ServerProfile, manifest: BackupManifest) -> None:
    """A SQLite set only under a SQLite server, a PostgreSQL set only under PostgreSQL, and
    the set's version must still serve SQLite."""
    label = f"{manifest.server}/{manifest.set_id}"
    on_sqlite = profile.sqlite is not None
    if on_sqlite != (manifest.engine == "sqlite"):
        raise SqliteSetRefused(
            f"Backup set {label} holds a {manifest.engine} database and the server "
            f"{profile.name!r} runs on {'sqlite' if on_sqlite else 'postgresql'}; pick a set "
            "taken of this server as it runs now."
        )
    if on_sqlite:
        require_serves_sqlite(manifest.letta_version)


def put_copy_back(sqlite: SqliteDatabase, store: ObjectStore, manifest: BackupManifest) -> dict:
    """Download the set's copy beside the live file, check it, then swap it in (the server
    must be stopped). Returns the counts found in the copy before the swap."""
    require_key(store, manifest)
    expected = manifest.objects[manifest.dump]
    incoming = incoming_path(sqlite.path)
    incoming.unlink(missing_ok=True)  # left by a run that died while downloading
    try:
        fetched = store.download_to(manifest.dump, incoming)
        if fetched.sha256 != expected.sha256:
            raise SqliteCopyRejected(f"{manifest.dump} does not match its sha256 in the manifest.")
        incoming.chmod(0o600)
        if problems := integrity_problems(incoming):
            raise SqliteCopyRejected(f"{manifest.dump} fails integrity_check: {problems[:3]}.")
        counts = table_counts(incoming)
        if differences := compare_counts(manifest.row_counts, counts):
            raise SqliteCopyRejected(f"{manifest.dump}'s counts differ: {differences}.")
        swap_in(incoming, sqlite.path)
    finally:
        incoming.unlink(missing_ok=True)
    return {"counts": counts, "bytes": fetched.size}


@task(name="put-sqlite-copy-back", cache_policy=NO_CACHE)
def put_copy_back_step(
    profile: ServerProfile, store: ObjectStore, manifest: BackupManifest
) -> dict[str, Any]:
    assert profile.sqlite is not None
    restored = put_copy_back(profile.sqlite, store, manifest)
    get_run_logger().info(
        "SQLite copy of %s/%s in place: %d rows in %d tables",
        manifest.server,
        manifest.set_id,
        sum(restored["counts"].values()),
        len(restored["counts"]),
    )
    return {"restore_warnings": [], "sequences": {"changes": []}, "count_differences": []}


def prove_sqlite_server(
    client: LettaClient, sqlite: SqliteDatabase, manifest: BackupManifest
) -> dict[str, Any]:
    """The running server's version and agents, and the file's counts, against the set."""
    version = client.health()["version"]
    agents = {a["id"]: a["name"] for a in client.list_agents()}
    return server_against_set(version, agents, table_counts(sqlite.path), manifest)


def put_copy_in_place(
    sqlite: SqliteDatabase, store: ObjectStore, manifest: BackupManifest
) -> list[dict]:
    """Put the set's copy onto a SQLite file no server of this profile runs on (its ``.letta``
    directory made if need be): :func:`put_copy_back`, then the file's counts against the
    set's (the differences: none when all is well). A restore's step and its recovery."""
    prepare_directory(sqlite)
    put_copy_back(sqlite, store, manifest)
    return compare_counts(manifest.row_counts, table_counts(sqlite.path))


def restore_sqlite_file_from_set(
    sqlite: SqliteDatabase, store: ObjectStore, manifest: BackupManifest
) -> dict[str, Any]:
    """Put the set's copy onto a SQLite file no server of this profile runs on (a restore
    onto another Letta home) and prove its counts. Never raises (a recovery reads ``ok``)."""
    started = time.monotonic()
    label = f"{manifest.server}/{manifest.set_id}"
    try:
        differences = put_copy_in_place(sqlite, store, manifest)
        result = {"ok": not differences, "count_differences": differences, "set": label}
    except Exception as exc:  # reported, not raised: the caller decides what it means
        get_run_logger().exception("restoring %s onto %s failed", label, sqlite.path)
        result = {"ok": False, "error": database_error_message(exc), "set": label}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def restore_sqlite_server_from_set(
    profile: ServerProfile, store: ObjectStore, manifest: BackupManifest
) -> dict[str, Any]:
    """Stop, put the copy back, start the set's version, prove it. Never raises (an undo)."""
    logger = get_run_logger()
    started = time.monotonic()
    label = f"{manifest.server}/{manifest.set_id}"
    assert profile.sqlite is not None
    try:
        require_key(store, manifest)
        profile.runtime.stop(log=logger.info)
        put_copy_back(profile.sqlite, store, manifest)
        profile.runtime.start(manifest.letta_version, profile.sqlite, log=logger.info)
        with LettaClient(profile.server) as client:
            proof = prove_sqlite_server(client, profile.sqlite, manifest)
        result = {
            "ok": proof["ok"],
            "version": proof["version"],
            "agents": proof["agents"],
            "agents_equal": proof["agents_equal"],
            "count_differences": proof["count_differences"],
            "set": label,
            "sequences": [],
        }
    except Exception as exc:  # reported, not raised: the caller decides what it means
        logger.exception("restoring %s failed", label)
        result = {"ok": False, "error": database_error_message(exc), "set": label}
    result["seconds"] = round(time.monotonic() - started, 1)
    logger.info("restore result: %s", result)
    return result
