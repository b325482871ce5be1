"""Put a backup set back into a Letta server's database and start the set's version.

Shared by the upgrade's automatic rollback, the rollback flow and the restore flow: one way to
restore, so that it is the same well-tested path every time. Each step is one system (the
runtime, PostgreSQL, the store); the order and the proof are here. The rollback and restore
flows call the steps one by one (so each is a task in the Prefect UI); the upgrade's rollback
and the rollback's own undo call :func:`restore_server_from_set`, which never raises.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prefect import get_run_logger

from ...blocks.letta_database import LettaDatabase
from ...blocks.letta_runtime import LettaRuntime, quiet
from ...blocks.server_profile import ServerProfile
from ...tasks.errors import database_error_message
from ...tasks.letta.api import LettaClient
from ...tasks.postgres.database_wait import lost_connection, wait_for_database
from ...tasks.postgres.letta_schema import (
    create_database,
    drop_database,
    empty_database,
    ensure_pgvector,
    incoming_database,
    swap_in_database,
    table_row_counts,
)
from ...tasks.postgres.privileges import RequestedReset, restore_plan
from ...tasks.postgres.restore import restore_dump
from ...tasks.postgres.restore_target import pgvector_schema_if_empty
from ...tasks.postgres.sequence_repair import repair_sequences
from ...tasks.sets.admission import require_key
from ...tasks.sets.catalog import runtime_files_of_set
from ...tasks.sets.manifest import BackupManifest
from ...tasks.sets.verification import (
    Phase,
    compare_counts,
    downloaded,
    dump_head,
    no_phase,
    restore_set_dump,
    server_against_set,
)
from ...tasks.store.objects import ObjectStore


def database_for_set(database: LettaDatabase, manifest: BackupManifest) -> LettaDatabase:
    """``database`` with the schema the set's tables live in (the Docker image's init script
    puts them in a schema named after the database, not in ``public``)."""
    if manifest.db_schema != "public" and database.db_schema != manifest.db_schema:
        return database.model_copy(update={"db_schema": manifest.db_schema})
    return database


def with_reset_mode(
    database: LettaDatabase, requested: RequestedReset | None = None
) -> tuple[LettaDatabase, dict[str, Any]]:
    """Pre-flight of every restore into ``database``: prove the role may empty it (recreate,
    or reset in place) and restore into it, and fix the mode for the whole run, undo
    included. Returns the database with a concrete ``reset_mode`` and the facts for the plan.
    Raises ``PrivilegeRefused`` (nothing changed) with the missing privilege and its fix."""
    plan = restore_plan(database, requested)
    return database.model_copy(update={"reset_mode": plan["reset_mode"]}), plan


def empty_database_steps(mode: str) -> list[str]:
    """How a plan names the step that empties the database, by reset mode."""
    if mode == "recreate":
        return ["drop and recreate database", "install pgvector"]
    return [
        "drop Letta's tables, sequences and types in place (database, pgvector and "
        "everything that is not Letta's kept)"
    ]


def restore_database_from_set(
    database: LettaDatabase,
    store: ObjectStore,
    manifest: BackupManifest,
    jobs: int = 2,
    phase: Phase = no_phase,
) -> dict[str, Any]:
    """Put the set's database in place of ``database``, as its ``reset_mode`` says (``auto``
    decides now): ``recreate`` restores into a new database while the dump downloads and
    swaps it in once counted; ``in-place`` downloads the dump, resets the schema, restores
    (``jobs`` parallel pg_restore workers). Then sequences are fixed and per-table counts
    compared with the manifest. ``phase`` (a flow's ``PhaseClock.phase``) times each step;
    a streamed restore's download, pre-data, data and post-data are one phase ("stream
    restore"), an in-place one's download ("download") comes before its restore."""
    require_key(store, manifest)
    database = database_for_set(database, manifest)
    if database.reset_mode == "auto":
        database, _ = with_reset_mode(database)
    if database.reset_mode == "recreate":
        return _restore_beside_and_swap(database, store, manifest, jobs, phase)
    expected = manifest.objects[manifest.dump]
    # In place there is nowhere else to restore to: the dump is downloaded (decrypted and
    # authenticated, sha256 compared) before the schema is emptied, so a damaged dump or a
    # wrong key leaves the database as it was.
    # Letta's objects only: the set's tables (and any Letta table a newer version added) are
    # dropped; the operator's tables and other schemas stay
    # (letta_ops.tasks.postgres.letta_objects).
    with contextlib.ExitStack() as files:
        with phase("download"):
            dump_path = files.enter_context(downloaded(store, manifest.dump, expected.sha256))
        with phase("empty database"):
            empty_database(database, database.reset_mode, also_tables=manifest.row_counts)
        with phase("restore"):
            warnings = restore_dump(database, dump_path, jobs=jobs)
    with phase("sequences"):
        sequences = repair_sequences(database).to_dict()
    with phase("counts"):
        differences = compare_counts(
            manifest.row_counts, table_row_counts(database, manifest.row_counts)
        )
    return {"restore_warnings": warnings, "sequences": sequences, "count_differences": differences}


def _restore_beside_and_swap(
    database: LettaDatabase, store: ObjectStore, manifest: BackupManifest, jobs: int, phase: Phase
) -> dict[str, Any]:
    """Recreate mode: restore into a new database beside the live one *while the dump
    downloads*, prove it (digest, sequences, per-table counts), and only then drop the live
    database and rename the new one in its place.

    Why: the download and the restore overlap (about the slower of the two, not their sum),
    and the live database stays exactly as it was until a complete, counted copy replaces it;
    a copy whose counts differ from the manifest is dropped and the live database kept.

    A live database that holds nothing but extensions (a staging copy, a new host) has nothing
    to keep: the set is restored into it directly. Why: DROP DATABASE forces a checkpoint,
    which after the restore writes every page just restored (2-3 s of a 20 s restore at
    0.5 GB), and the database beside it costs a CREATE DATABASE; raw ``pg_restore`` pays
    neither. A failed restore leaves it as it was: empty, pgvector where it had it.
    """
    with contextlib.ExitStack() as head_held:
        with phase("dump head"):  # a wrong key or a damaged header: nothing created
            head = head_held.enter_context(dump_head(store, manifest))
        with phase("create database"):
            empty, vector_schema = pgvector_schema_if_empty(database)
            wanted_schema = manifest.pgvector_schema or "public"
            direct = empty and vector_schema in (None, wanted_schema)
            incoming = database if direct else incoming_database(database)
            if direct:
                ensure_pgvector(database, manifest.pgvector_schema)
            else:
                drop_database(incoming)  # left by a restore that was interrupted
                create_database(
                    incoming, with_pgvector=True, pgvector_schema=manifest.pgvector_schema
                )
        try:
            with phase("stream restore"):
                warnings = restore_set_dump(manifest, incoming, head, jobs)
            with phase("sequences"):
                sequences = repair_sequences(incoming).to_dict()
            with phase("counts"):
                differences = compare_counts(
                    manifest.row_counts, table_row_counts(incoming, manifest.row_counts)
                )
        except BaseException:
            _drop_incoming(incoming, direct, vector_schema)
            raise
    with phase("swap"):
        if differences:
            _drop_incoming(incoming, direct, vector_schema)
        elif not direct:
            swap_in_database(incoming, database)
    return {
        "restore_warnings": warnings,
        "sequences": sequences,
        "count_differences": differences,
        "replaced": not differences,
    }


def _drop_incoming(incoming: LettaDatabase, direct: bool, vector_schema: str | None) -> None:
    """Drop what a failed restore wrote; an empty target restored into directly is recreated
    as it was (empty, pgvector in its schema where it had it)."""
    drop_database(incoming)
    if direct:
        create_database(
            incoming,
            with_pgvector=vector_schema is not None,
            pgvector_schema=vector_schema if vector_schema != "public" else None,
        )


def start_set_version(
    runtime: LettaRuntime,
    database: LettaDatabase,
    version: str,
    timeout: float | None = None,
    log=quiet,
) -> dict[str, Any]:
    """Start Letta ``version`` on ``database`` and wait until it reports that version."""
    record = runtime.with_timeout(timeout).start(version, database, log=log)
    secured = getattr(record, "secured", None)
    return {
        "pid": record.pid,
        "version": record.version,
        "base_url": record.base_url,
        "auth": None if secured is None else ("password required" if secured else "OPEN"),
    }


def prove_server_matches_set(
    client: LettaClient, database: LettaDatabase, manifest: BackupManifest
) -> dict[str, Any]:
    """Version, agents (id -> name) and per-table counts of the running server against the
    manifest. Counts are taken after the start: a server that rewrote rows at startup would
    not be exactly where the set was."""
    version = client.health()["version"]
    agents = {a["id"]: a["name"] for a in client.list_agents()}
    counts = table_row_counts(database_for_set(database, manifest), manifest.row_counts)
    return server_against_set(version, agents, counts, manifest)


def restore_server_from_set(
    profile: ServerProfile,
    store: ObjectStore,
    manifest: BackupManifest,
    runtime: LettaRuntime | None = None,
    jobs: int = 2,
) -> dict[str, Any]:
    """Stop the server, restore the set, start the set's Letta version, prove it.

    Never raises: the result says ``ok`` and, when not, why — callers put it in reports.
    """
    logger = get_run_logger()
    runtime = runtime or profile.runtime
    database = profile.require_database()
    started = time.monotonic()
    label = f"{manifest.server}/{manifest.set_id}"
    for attempt in (
        1,
        2,
    ):  # a second time only after a lost connection (letta_ops.tasks.postgres.database_wait)
        try:
            require_key(store, manifest)  # before the stop: a set nobody can decrypt: no change
            runtime.stop(log=logger.info)
            wait_for_database(database, log=logger.info)  # a restart may have failed the run
            restored = restore_database_from_set(database, store, manifest, jobs)
            runtime.restore_snapshot(runtime_files_of_set(store, manifest), log=logger.info)
            start_set_version(runtime, database, manifest.letta_version, log=logger.info)
            with LettaClient(profile.server) as client:
                proof = prove_server_matches_set(client, database, manifest)
            result = {
                "ok": proof["ok"],
                "version": proof["version"],
                "agents": proof["agents"],
                "agents_equal": proof["agents_equal"],
                "count_differences": proof["count_differences"],
                "set": label,
                "sequences": restored["sequences"]["changes"],
            }
            break
        except Exception as exc:  # reported, not raised: the caller decides what it means
            if attempt == 1 and lost_connection(exc):
                logger.warning(
                    "restoring %s lost its database connection (%s); once more",
                    label,
                    database_error_message(exc),
                )
                continue
            logger.exception("restoring %s failed", label)
            result = {"ok": False, "error": database_error_message(exc), "set": label}
            break
    result["seconds"] = round(time.monotonic() - started, 1)
    logger.info("restore result: %s", result)
    return result
