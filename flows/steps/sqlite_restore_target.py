"""Restore a SQLite set onto a SQLite file: another Letta home, or the profile's own SQLite
server when its file is empty (then the set's version is started there and proven).

Why beside flows/steps/sqlite_restore.py and not inside flows/restore.py: the restore's
PostgreSQL path empties a database and runs pg_restore; a SQLite target is one file, put in
place by the rollback's own step (:func:`put_copy_back`: downloaded beside the target, checked
by sha256 from the authenticated manifest, ``integrity_check`` and counts, then renamed over
it). The journal records the set, the file and whether a server starts, so ``recover`` can put
the copy there again after a kill (tasks/runs/recovery_plan.py): the file is whole at every
moment, the old one or the new one.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ...blocks.server_profile import ServerProfile, load_profile
from ...tasks.letta.api import LettaClient
from ...tasks.postgres.privileges import RequestedReset
from ...tasks.runs.journal import close_unfinished
from ...tasks.runs.phase_timings import PhaseClock
from ...tasks.sets.admission import require_dump, require_intact
from ...tasks.sets.catalog import load_manifest
from ...tasks.sets.manifest import BackupManifest
from ...tasks.sqlite.database import SqliteDatabase, require_serves_sqlite
from ...tasks.sqlite.restore_target import (
    SqliteTargetRefused,
    require_room,
    sqlite_target,
    sqlite_target_name,
    target_tables,
)
from ...tasks.store.objects import ObjectStore
from ..reports.restore import RestorePlan, RestoreReport
from ..verify import resolve_set
from .server_steps import start_server_step
from .sqlite_restore import prove_sqlite_server, put_copy_in_place


@task(name="restore-sqlite-preflight", cache_policy=NO_CACHE)
def sqlite_preflight(
    store: ObjectStore,
    backup_set: str,
    sqlite: str | None,
    server: str | None,
    force: bool,
    allow_legacy: bool = False,
) -> tuple[RestorePlan, BackupManifest, SqliteDatabase, ServerProfile]:
    """The SQLite target (``sqlite``, else the profile's own SQLite file) and the set, checked
    before anything changes: a SQLite set, a SQLite file (empty, or replaced with ``force``;
    the profile's own only when empty: a live one is rolled back), intact objects, room."""
    profile = load_profile(server)
    if sqlite is None and profile.sqlite is None:
        raise SqliteTargetRefused(
            "Name the restore's target: --database URI_OR_BLOCK for a PostgreSQL set, "
            "--sqlite HOME/.letta/sqlite.db for a SQLite one."
        )
    target = sqlite_target(sqlite) if sqlite is not None else profile.sqlite
    assert target is not None
    server_name, set_id = resolve_set(store, backup_set, profile.name)
    manifest = load_manifest(store, server_name, set_id, allow_legacy)
    require_dump(manifest, "sqlite")
    tables = target_tables(target)
    own = profile.sqlite is not None and profile.sqlite.path == target.path
    if tables and own:
        raise SqliteTargetRefused(
            f"{target.path} is the live database of server {profile.name!r}; restore a server "
            "onto its own database with 'letta-ops rollback' (it takes a safety backup)."
        )
    if tables and not force:
        raise SqliteTargetRefused(
            f"{target.path} already holds {tables} tables; restore refuses to overwrite it: "
            "pass --force to replace the file, or name an empty Letta home."
        )
    objects = require_intact(store, manifest)
    require_room(target, manifest.objects[manifest.dump].size)
    if own:  # the profile's server starts on it: the set's version must serve SQLite
        require_serves_sqlite(manifest.letta_version)
        profile.runtime.require_drivable()
        profile.runtime.prepare([manifest.letta_version], log=get_run_logger().info)
    plan = RestorePlan(
        set=f"{manifest.server}/{manifest.set_id}",
        set_created_at=manifest.created_at,
        letta_version=manifest.letta_version,
        target=str(target.path),
        target_tables_before=tables,
        replaces_existing=bool(tables),
        reset_mode="sqlite: the checked copy renamed over the file",
        objects_verified=objects,
        tables=len(manifest.row_counts),
        rows=sum(manifest.row_counts.values()),
        agents_in_set=len(manifest.agents),
        start=own,
        base_url=profile.server.base_url if own else None,
        server_name=profile.name if own else sqlite_target_name(target),
        engine="sqlite",
    )
    return plan, manifest, target, profile


@task(name="put-sqlite-copy-on-target", cache_policy=NO_CACHE)
def put_sqlite_copy_step(
    target: SqliteDatabase, store: ObjectStore, manifest: BackupManifest
) -> list[dict[str, Any]]:
    """Download, check and rename the copy into place; the file's counts against the set."""
    return put_copy_in_place(target, store, manifest)


@task(name="prove-sqlite-server-matches-set", cache_policy=NO_CACHE)
def prove_sqlite_step(profile: ServerProfile, manifest: BackupManifest) -> dict[str, Any]:
    assert profile.sqlite is not None
    with LettaClient(profile.server) as client:
        return prove_sqlite_server(client, profile.sqlite, manifest)


def restore_onto_sqlite(
    report: RestoreReport,
    manifest: BackupManifest,
    target: SqliteDatabase,
    profile: ServerProfile,
    store: ObjectStore,
    record: Any,
    clock: PhaseClock,
    start_timeout_seconds: float,
) -> dict[str, Any] | None:
    """The journaled steps (the destructive lock held by the caller): on the profile's own
    server stop it, put the copy in place, start the set's version and prove it; on another
    file only put the copy in place. Returns the proof (None: no server started)."""
    plan, proof = report.plan, None
    journal = record.journal()
    journal.begin(
        set=plan.set,
        target=plan.target,
        engine="sqlite",
        start=plan.start,
        to_version=manifest.letta_version,
        reset_mode=plan.reset_mode,
    )
    if plan.start:
        journal.enter("stop server")
        with clock.phase("stop server"):
            profile.runtime.stop(log=get_run_logger().info)
    journal.enter("restore the set's dump")
    with clock.phase("put sqlite copy in place"):
        report.count_differences = put_sqlite_copy_step(target, store, manifest)
    if plan.start and not report.count_differences:
        journal.enter(f"start {manifest.letta_version}")
        with clock.phase("start server"):
            report.server = start_server_step(
                profile, manifest.letta_version, start_timeout_seconds
            )
        journal.enter("verify")
        with clock.phase("prove server"):
            proof = prove_sqlite_step(profile, manifest)
        report.verification = proof
    journal.finish("restored")
    # An earlier restore onto this file that was interrupted is moot now.
    close_unfinished(journal.store, journal.server, f"superseded by {record.record_id}")
    return proof


def refuse_postgres_options(
    database: str | None,
    start: bool,
    port: int | None,
    runtime: str | None,
    name: str | None,
    reset: RequestedReset | None,
) -> None:
    """A SQLite target is a file: the options that place a PostgreSQL restore's database or
    its new server have no meaning there, and are refused rather than ignored."""
    given = [
        option
        for option, value in (
            ("--database", database),
            ("--start", start),
            ("--port", port),
            ("--runtime", runtime),
            ("--name", name),
            ("--reset", reset),
        )
        if value
    ]
    if given:
        raise SqliteTargetRefused(
            f"{', '.join(given)} apply to a PostgreSQL target, not a SQLite one (a SQLite "
            "target is the file itself; the profile's own SQLite server is started on the "
            "set's version without them): drop them, or restore a PostgreSQL set with "
            "--database alone."
        )
