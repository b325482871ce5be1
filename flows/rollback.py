"""Roll a Letta server back to a backup set: the set's version with the set's data, proven.

The runbook this replaces, as one run:

1. pre-flight, nothing changes: the set has a manifest, was taken of this server, every object
   still matches its sha256, its Letta version (and the running one) installs, the server runs
   under letta-ops' runtime (so it can be stopped and started), there is disk room;
2. take the one destructive lock of this server (a strict Prefect global concurrency limit);
3. optionally wait for an operator's approval;
4. back up the current state (verified, pinned, purpose ``pre-rollback``): a rollback is
   itself undoable by rolling "forward" to that set;
5. stop -> drop and recreate the database -> pgvector (or, in a database Letta shares, drop
   Letta's objects only: ``letta_ops.tasks.postgres.letta_objects``) -> parallel pg_restore ->
   repair sequences -> start the set's version -> prove version, agents and per-table counts equal
   the manifest's;
6. any failure after the stop undoes itself inside a Prefect transaction: restore the safety
   backup and start the version that was running.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ..blocks.letta_runtime import LettaRuntime
from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.errors import Failed, Refused, database_error_message
from ..tasks.letta.api import LettaAPIError, LettaClient
from ..tasks.letta.server_tls import require_server_can_use_tls
from ..tasks.letta.versions import release_at_revision
from ..tasks.postgres.client_tools import client_tools
from ..tasks.postgres.letta_inventory import agent_inventory, database_size
from ..tasks.postgres.letta_schema import alembic_revision, table_row_counts
from ..tasks.postgres.privileges import RequestedReset
from ..tasks.postgres.rows_since import agents_created_since, rows_written_since
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.journal import JournaledSteps
from ..tasks.runs.phase_timings import PhaseClock
from ..tasks.sets.admission import (
    newest_rollback_set,
    require_dump,
    require_intact,
    require_same_server,
)
from ..tasks.sets.catalog import load_manifest, runtime_files_of_set
from ..tasks.sets.manifest import BackupManifest, set_prefix
from ..tasks.sqlite.online_copy import table_counts
from ..tasks.store.objects import ObjectStore
from .backup import backup
from .reports.rollback import (
    RollbackPlan,
    RollbackReport,
    render_rollback_markdown,
)
from .steps.destructive_run import destructive_section
from .steps.restore_server import (
    database_for_set,
    empty_database_steps,
    prove_server_matches_set,
    restore_database_from_set,
    restore_server_from_set,
    with_reset_mode,
)
from .steps.server_steps import start_server_step, stop_server_step, undoable
from .steps.sqlite_restore import (
    prove_sqlite_server,
    put_copy_back_step,
    require_set_fits,
    restore_sqlite_server_from_set,
)
from .verify import resolve_set

#: The most lines of a runtime file's diff the rollback plan shows.
DIFF_LINES = 60


class RollbackRefused(Refused):
    """Pre-flight said no; nothing was changed."""


class RollbackFailed(Failed):
    """The rollback failed after it stopped the server; see the undo result."""


@dataclass
class RollbackState(JournaledSteps):
    """What the undo needs, and what it did. Lives in the Prefect transaction."""

    profile: ServerProfile
    store: ObjectStore
    target: BackupManifest
    safety: BackupManifest
    undo: dict[str, Any] | None = None
    clock: PhaseClock = field(default_factory=PhaseClock)

    def __deepcopy__(self, memo: dict) -> RollbackState:
        """Shared, not copied: Prefect's ``txn.get`` deep-copies stored values, but the undo
        must report into the very state the flow reads (and a boto3 client cannot be copied)."""
        return self


# --------------------------------------------------------------------------- pre-flight


def choose_set(
    profile: ServerProfile, store: ObjectStore, backup_set: str | None, allow_legacy: bool = False
) -> BackupManifest:
    """The named set (SERVER/SET_ID, SET_ID or latest), else the newest verified pre-upgrade
    set; refused unless it authenticates (or is a legacy set named with ``allow_legacy``), is
    complete, this server's, and intact in storage."""
    if backup_set:
        server_name, set_id = resolve_set(store, backup_set, profile.name)
    else:
        newest = newest_rollback_set(store, profile.name)
        server_name, set_id = newest.server, newest.set_id
    manifest = load_manifest(
        store, server_name, set_id, allow_legacy=bool(backup_set and allow_legacy)
    )
    require_same_server(manifest, profile.name)
    require_set_fits(profile, manifest)
    require_dump(manifest, manifest.engine)
    require_intact(store, manifest)
    return manifest


def current_server(profile: ServerProfile) -> tuple[str, dict[str, str], bool]:
    """Version, agents (id -> name) and whether the server is down.

    A server letta-ops runs answers its API. A server that is down (a crash, a killed
    upgrade: exactly when a rollback is needed) is described by its database: the release its
    alembic revision belongs to, its agents by SQL. A server that answers but that letta-ops
    did not start cannot be stopped by it: refused by the runtime.
    """
    if profile.runtime.status().get("running"):
        with LettaClient(profile.server) as client:
            version = client.health()["version"]
            return version, {a["id"]: a["name"] for a in client.list_agents()}, False
    try:
        with LettaClient(profile.server, retries=1) as client:
            client.health()
    except LettaAPIError as exc:
        if exc.status != 0:
            raise
        database = profile.require_database()
        revision = alembic_revision(database)
        version = release_at_revision(revision)
        if version is None:
            raise RollbackRefused(
                f"The Letta server {profile.server.base_url} is down and its database's alembic "
                f"revision {revision!r} is no known release; use 'letta-ops restore --force' "
                "onto it, or 'letta-ops recover' after an interrupted run."
            ) from exc
        inventory = agent_inventory(database)
        return version, {i: v["name"] for i, v in inventory.items()}, True
    profile.runtime.require_drivable()  # it answers: can this runtime stop it?
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        return version, {a["id"]: a["name"] for a in client.list_agents()}, False


@task(name="rollback-preflight", cache_policy=NO_CACHE)
def preflight(
    profile: ServerProfile,
    store: ObjectStore,
    backup_set: str | None,
    reset: RequestedReset | None = None,
    allow_legacy: bool = False,
) -> tuple[RollbackPlan, BackupManifest]:
    manifest = choose_set(profile, store, backup_set, allow_legacy)
    if profile.sqlite is not None:
        return sqlite_plan(profile, store, manifest), manifest
    database = profile.require_database()
    # The rollback and its undo empty this database: prove the role may, before the stop.
    _, privileges = with_reset_mode(database_for_set(database, manifest), reset)
    profile.runtime.require_drivable()
    require_server_can_use_tls(database, manifest.letta_version)
    current, live, down = current_server(profile)
    # Both versions must install before anything stops: the set's is started (and the undo
    # starts the current one again).
    profile.runtime.prepare([manifest.letta_version, current], log=get_run_logger().info)
    size = database_size(database)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < size * 2:
        raise RollbackRefused(
            f"Only {free} bytes are free in {tempfile.gettempdir()} for a database of "
            f"{size} bytes (safety dump and restore need about twice that); free some space."
        )
    written = rows_written_since(database, manifest.created_at)
    created = agents_created_since(database, manifest.created_at)
    plan = RollbackPlan(
        **_set_against_server(profile, manifest, current, live),
        pg_tools=client_tools(database).describe(),
        server_down=down,
        written_since_set=written,
        agents_created_since_set=created,
        database_bytes=size,
        reset_mode=privileges["reset_mode"],
        left_alone=privileges["left_alone"],
        database_role=privileges["role"],
        postgres_major=privileges["server_major"],
        steps=[
            "safety backup of the current state (verified, pinned, pre-rollback)",
            "stop server",
            *empty_database_steps(privileges["reset_mode"]),
            "restore the set's pg_dump (parallel pg_restore)",
            "repair sequences",
            f"start Letta {manifest.letta_version}",
            "verify version, agents and per-table counts against the manifest",
        ],
        expected_downtime_seconds=75,
        runtime_file_changes=runtime_file_changes(profile.runtime, store, manifest),
    )
    return plan, manifest


def sqlite_plan(
    profile: ServerProfile, store: ObjectStore, manifest: BackupManifest
) -> RollbackPlan:
    """A SQLite server's plan: it must run under letta-ops' runtime (its version and agents
    come from its API: a SQLite file names no release); its file is replaced, not emptied."""
    profile.runtime.require_drivable()
    if not profile.runtime.status().get("running"):
        raise RollbackRefused(
            f"The Letta server {profile.server.base_url} is not running; a SQLite server is "
            "rolled back from a running state (its safety set needs its version): start it "
            "with 'letta-ops runtime start', or run 'letta-ops recover' after an interrupted run."
        )
    current, live, _ = current_server(profile)
    profile.runtime.prepare([manifest.letta_version, current], log=get_run_logger().info)
    assert profile.sqlite is not None
    size = profile.sqlite.path.stat().st_size
    free = shutil.disk_usage(profile.sqlite.letta_dir).free
    if free < size * 2:
        raise RollbackRefused(
            f"Only {free} bytes are free in {profile.sqlite.letta_dir} for a database of "
            f"{size} bytes (the copy is written beside the live file); free some space."
        )
    return RollbackPlan(
        **_set_against_server(profile, manifest, current, live),
        pg_tools="none: SQLite (Python's sqlite3)",
        server_down=False,
        written_since_set=None,
        agents_created_since_set=None,
        database_bytes=size,
        reset_mode="sqlite: the file replaced atomically",
        left_alone=[],
        database_role="the file's owner",
        postgres_major=None,
        steps=[
            "safety backup of the current state (verified, pinned, pre-rollback)",
            "stop server",
            "download the set's SQLite copy beside the live file; integrity_check and counts",
            "settle the live file (WAL checkpointed), then rename the copy over it (fsynced)",
            f"start Letta {manifest.letta_version}",
            "verify version, agents and per-table counts against the manifest",
        ],
        expected_downtime_seconds=60,
        runtime_file_changes={},
    )


def _set_against_server(
    profile: ServerProfile, manifest: BackupManifest, current: str, live: dict[str, str]
) -> dict[str, Any]:
    """The plan's fields every rollback shares, whatever the server's database: the server,
    the set, the versions and the agents going and coming back."""
    in_set = {a.id: a.name for a in manifest.agents}
    return {
        "server": profile.name,
        "base_url": profile.server.base_url,
        "runtime": profile.runtime.describe(),
        "set": f"{manifest.server}/{manifest.set_id}",
        "set_created_at": manifest.created_at,
        "set_purpose": manifest.purpose,
        "from_version": current,
        "to_version": manifest.letta_version,
        "agents_now": len(live),
        "agents_in_set": len(in_set),
        # Live agents the set does not hold: gone after the rollback, kept in the safety set.
        "agents_not_in_set": sorted(name for i, name in live.items() if i not in in_set),
        "agents_coming_back": sorted(name for i, name in in_set.items() if i not in live),
        "tables": len(manifest.row_counts),
        "rows": sum(manifest.row_counts.values()),
        "objects_verified": len(manifest.objects),
    }


def runtime_file_changes(
    runtime: LettaRuntime, store: ObjectStore, manifest: BackupManifest
) -> dict[str, list[str]]:
    """What putting the set's runtime files back changes on the host: a unified diff per file
    (of at most :data:`DIFF_LINES` lines) against the file in place now. Read from the
    authenticated set, checked against its sha256, before anything is stopped."""
    kept = runtime_files_of_set(store, manifest)
    if not kept:
        return {}
    now = runtime.snapshot()
    changes = {}
    for name, data in sorted(kept.items()):
        diff = difflib.unified_diff(
            now.get(name, b"").decode(errors="replace").splitlines(),
            data.decode(errors="replace").splitlines(),
            f"{name} (now)",
            f"{name} (set {manifest.set_id})",
            lineterm="",
        )
        changes[name] = list(itertools.islice(diff, DIFF_LINES))
    return changes


# --------------------------------------------------------------------------- steps


def undo_rollback(state: RollbackState) -> None:
    """The rollback's undo once the server was stopped: put the safety set back and start the
    version the server ran before."""
    if state.journal is not None:
        state.journal.enter("undo: restore the safety set")
    with state.clock.phase("undo"):
        if state.profile.sqlite is not None:
            state.undo = restore_sqlite_server_from_set(state.profile, state.store, state.safety)
        else:
            state.undo = restore_server_from_set(state.profile, state.store, state.safety)


@task(
    name="restore-set-into-server",
    cache_policy=NO_CACHE,
    timeout_seconds=run_timeouts.PG_RESTORE,
)
def restore_database_step(
    profile: ServerProfile,
    store: ObjectStore,
    manifest: BackupManifest,
    jobs: int,
    clock: PhaseClock | None = None,
) -> dict[str, Any]:
    return restore_database_from_set(
        profile.require_database(), store, manifest, jobs, (clock or PhaseClock()).phase
    )


@task(name="put-back-runtime-files", cache_policy=NO_CACHE)
def put_back_runtime_files_step(
    profile: ServerProfile, store: ObjectStore, manifest: BackupManifest
) -> None:
    """The runtime's own files as they were when the set was taken (a compose file)."""
    profile.runtime.restore_snapshot(
        runtime_files_of_set(store, manifest), log=get_run_logger().info
    )


@task(name="prove-server-matches-set", cache_policy=NO_CACHE)
def prove_step(profile: ServerProfile, manifest: BackupManifest) -> dict[str, Any]:
    with LettaClient(profile.server) as client:
        if profile.sqlite is not None:
            return prove_sqlite_server(client, profile.sqlite, manifest)
        return prove_server_matches_set(client, profile.require_database(), manifest)


def run_rollback(state: RollbackState, start_timeout: float, jobs: int) -> dict[str, Any]:
    profile, target, clock = state.profile, state.target, state.clock
    state.enter("stop server")
    with clock.phase("stop server"):
        stop_server_step(profile)
    stopped = time.monotonic()
    state.enter("restore the set's dump")
    if profile.sqlite is not None:
        with clock.phase("put sqlite copy back"):
            restored = put_copy_back_step(profile, state.store, target)
    else:
        restored = restore_database_step(profile, state.store, target, jobs, clock)
    if restored["count_differences"]:
        raise RollbackFailed(
            f"the restored tables differ from the manifest: {restored['count_differences']}"
        )
    with clock.phase("runtime files"):
        put_back_runtime_files_step(profile, state.store, target)
    state.enter(f"start {target.letta_version}")
    with clock.phase("start server"):
        start_server_step(profile, target.letta_version, start_timeout)
    state.enter("verify")
    with clock.phase("prove server"):
        proof = prove_step(profile, target)
    if not proof["ok"]:
        raise RollbackFailed(f"verification after the restore failed: {proof}")
    return {
        "downtime_seconds": round(time.monotonic() - stopped, 1),
        "sequences": restored["sequences"]["changes"],
        "restore_warnings": restored["restore_warnings"],
        "verification": proof,
    }


# --------------------------------------------------------------------------- the flow


@flow(name="letta-rollback", flow_run_name=run_name("rollback", "backup_set"))
def rollback(
    backup_set: str | None = None,
    server: str | None = None,
    store: str | None = None,
    dry_run: bool = False,
    approval: bool = False,
    lock_timeout_seconds: float = 30,
    start_timeout_seconds: float = 240,
    jobs: int = 2,
    reset: RequestedReset | None = None,
    allow_legacy: bool = False,
) -> RollbackReport:
    """Put ``server`` back on ``backup_set`` (default: its newest verified pre-upgrade set).

    ``backup_set`` is ``SERVER/SET_ID``, a SET_ID of this server, or ``latest``. ``reset``
    says how the database is emptied (``recreate`` or ``in-place``; default: the database
    block's setting, else whatever the role may do).
    """
    parameters = {"backup_set": backup_set, "store": store, "dry_run": dry_run}
    clock = PhaseClock()
    with contextlib.ExitStack() as run:
        with clock.phase("start-up"):
            record = run.enter_context(audited_run("rollback", server, parameters))
            logger = get_run_logger()
            profile = load_profile(server, need_database=True)
            object_store = open_backup_store(store, server)
            record.update(server=profile.name, store=object_store)
            tag_current_run(profile.name, "rollback")
        try:
            with clock.phase("pre-flight"):
                plan, manifest = preflight(profile, object_store, backup_set, reset, allow_legacy)
        except ValueError:
            record.update(outcome="refused")
            raise
        if profile.sqlite is None:
            profile.database = profile.require_database().model_copy(
                update={"reset_mode": plan.reset_mode}
            )
        record.update(
            versions_from=plan.from_version,
            versions_to=plan.to_version,
            backup_set=plan.set,
        )
        report = RollbackReport(plan=plan, dry_run=dry_run, outcome="planned")
        if dry_run:
            report.phases = clock.timings()
            publish_report(profile.name, "rollback", render_rollback_markdown(report))
            record.update(outcome="planned")
            return report
        with destructive_section(
            "rollback",
            profile.name,
            record,
            report=report,
            approval=approval,
            lock_timeout_seconds=lock_timeout_seconds,
            database=profile.database,
            phase=clock.phase,
        ):
            with clock.phase("safety backup"):
                safety_report = backup(
                    server=server,
                    store=store,
                    allow_partial_agents=True,
                    purpose="pre-rollback",
                    pinned=True,
                    server_down_ok=plan.server_down,
                )
                safety = load_manifest(object_store, *safety_report.set.split("/"))
            state = RollbackState(profile, object_store, manifest, safety, clock=clock)
            state.journal = record.journal(object_store, set_prefix(safety.server, safety.set_id))
            state.journal.begin(
                backup_set=safety_report.set,
                from_version=plan.from_version,
                to_version=manifest.letta_version,
                target_set=plan.set,
                target_revision=manifest.alembic_revision,
                reset_mode=plan.reset_mode,
            )
            report.safety_set = safety_report.set
            report.started_at = datetime.now(UTC)
            record.update(counts_before=safety.row_counts, safety_set=safety_report.set)
            try:
                with undoable(state, lambda: undo_rollback(state)):
                    result = run_rollback(state, start_timeout_seconds, jobs)
            except Exception as exc:
                cause = f"at step {state.step}: {database_error_message(exc)}"
                undo = state.undo
                if undo is None or undo.get("ok"):  # consistent again; else: recover
                    state.journal.finish("failed, undone" if undo else "failed, unchanged")
                report.outcome = "failed, undone" if (undo or {}).get("ok") else "failed"
                report.error = cause
                report.undo = undo
                record.update(
                    rollback_outcome=(
                        "not needed" if undo is None else "succeeded" if undo["ok"] else "failed"
                    )
                )
                report.phases = clock.timings()
                publish_report(profile.name, "rollback", render_rollback_markdown(report))
                raise RollbackFailed(
                    f"Rollback of {profile.name} to {plan.set} failed "
                    f"({cause}); "
                    + (
                        "nothing destructive had happened"
                        if undo is None
                        else f"the undo restored Letta {plan.from_version} from the safety "
                        f"set {safety_report.set}"
                        if undo.get("ok")
                        else f"the undo FAILED to restore Letta {plan.from_version} "
                        f"({undo.get('error') or 'counts differ'}): the server may be down; once "
                        f"the cause is fixed run 'letta-ops rollback --to {safety_report.set}'"
                    )
                ) from exc
        state.journal.finish("succeeded")
        with clock.phase("counts"):
            counts_after = (
                table_counts(profile.sqlite.path)
                if profile.sqlite is not None
                else table_row_counts(profile.require_database())
            )
        record.update(counts_after=counts_after)
        report.downtime_seconds = result["downtime_seconds"]
        report.sequences = result["sequences"]
        report.restore_warnings = result["restore_warnings"]
        report.verification = result["verification"]
        report.outcome = "succeeded"
        report.finished_at = datetime.now(UTC)
        report.phases = clock.timings()
        publish_report(profile.name, "rollback", render_rollback_markdown(report))
        logger.info("rolled %s back to %s (Letta %s)", profile.name, plan.set, plan.to_version)
        return report
