"""Restore a backup set onto a *different* database: a staging copy, or a new host after a
disk loss. The rollback's machinery, pointed somewhere else.

The runbook this replaces, as one run:

1. pre-flight, nothing changes: the target database is named without a password on the
   command line, is not the live server's database, and is empty (or ``force`` says replace
   it); the set has a manifest and every object matches its sha256; with ``start``, the set's
   Letta version installs and the port is free;
2. take the destructive lock of the target;
3. drop and recreate the target -> pgvector (or, when it holds anything that is not
   Letta's, drop Letta's objects only: ``letta_ops.tasks.postgres.letta_objects``) -> parallel
   pg_restore -> repair sequences -> compare per-table counts with the manifest;
4. with ``start``: start a Letta of the set's version on it and prove version, agents and
   counts equal the manifest's.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.letta_database import LettaDatabase, target_database
from ..blocks.letta_server import LettaServer
from ..blocks.process_runtime import LettaProcessRuntime
from ..blocks.server_profile import load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.letta.api import LettaClient
from ..tasks.postgres.letta_schema import database_exists
from ..tasks.postgres.privileges import RequestedReset
from ..tasks.postgres.restore_target import (
    RestoreTargetRefused,
    port_in_use,
    same_database,
    user_table_count,
)
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.journal import close_unfinished
from ..tasks.runs.phase_timings import PhaseClock, PhaseTiming, phases_markdown
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.runtimes.install import install_runtime
from ..tasks.server_naming import sanitize_server_name
from ..tasks.sets.admission import require_dump, require_intact
from ..tasks.sets.catalog import load_manifest
from ..tasks.sets.manifest import BackupManifest
from ..tasks.store.objects import ObjectStore
from .reports.server_restore import ServerProof, ServerStart
from .steps.destructive_run import destructive_section
from .steps.restore_server import (
    database_for_set,
    prove_server_matches_set,
    restore_database_from_set,
    start_set_version,
    with_reset_mode,
)
from .verify import CountDifference, resolve_set


class RestoreFailed(Failed):
    """The restore ran but the result is not what the set holds."""


class RestorePlan(ReportPart):
    """What the pre-flight found and what the restore will do; nothing changed yet."""

    set: str = Field(description="SERVER/SET_ID restored.")
    set_created_at: datetime
    letta_version: str = Field(description="The set's Letta version.")
    target: str = Field(description="The target database's URI, password redacted.")
    target_tables_before: int = Field(description="Tables the target held before.")
    replaces_existing: bool = Field(description="The target held tables (--force).")
    reset_mode: str = Field(description="How the target is emptied.")
    left_alone: list[str] = Field(
        default_factory=list,
        description="What the database holds that is not Letta's and stays as it is (the "
        "operator's tables in Letta's schema one by one, other schemas as a whole).",
    )
    objects_verified: int = Field(description="Objects whose sha256 was checked.")
    tables: int
    rows: int
    agents_in_set: int
    start: bool = Field(description="A Letta of the set's version starts on it.")
    base_url: str | None = Field(description="Where it starts (None: not started).")
    server_name: str | None = Field(description="The restored server's name (None: no start).")


class RestoredAddress(ReportPart):
    """The environment later commands find the restored server with."""

    LETTA_BASE_URL: str
    LETTA_OPS_SERVER_NAME: str
    LETTA_PG_URI: str = Field(description="The target, password redacted (use PGPASSWORD).")


class RestoreReport(FlowReport):
    """``restore()``'s result and ``letta-ops restore --json``; with ``dry_run`` the plan."""

    model_config = ConfigDict(validate_assignment=True)

    plan: RestorePlan
    dry_run: bool = Field(False, description="True: the plan only, nothing changed.")
    outcome: str = Field(description="planned, running, succeeded or failed.")
    count_differences: list[CountDifference] | None = Field(
        None, description="Tables whose restored count differs from the manifest's."
    )
    sequences: list[dict[str, Any]] | None = Field(
        None,
        description="The sequence repair's changes; their keys vary by action (action, "
        "sequence, table, column, from, to).",
    )
    restore_warnings: list[str] | None = Field(None, description="What pg_restore warned about.")
    server: ServerStart | None = Field(None, description="The started server (None: no start).")
    verification: ServerProof | None = Field(None, description="None: no start.")
    address_with: RestoredAddress | None = Field(None, description="None: no start.")
    finished_at: datetime | None = None
    phases: list[PhaseTiming] = Field(
        default_factory=list,
        description="Each phase's start and seconds, in order of start; a streamed restore's "
        "download, pre-data, data and post-data are one phase ('stream restore'); a plaintext "
        "set is downloaded and checked whole first ('dump head'), then restored from that file "
        "by pg_restore -j ('stream restore').",
    )


def restored_runtime(
    runtime_block: str | None, port: int | None, name: str | None = None
) -> LettaProcessRuntime:
    """How to run the restored server: a saved Letta Process Runtime block, else a runtime of
    its own on ``port`` of 127.0.0.1.

    One home per server: the runtime is named ``name``, else the name every later command
    derives from the server's URL (``127.0.0.1-PORT``), so ``LETTA_BASE_URL=... letta-ops
    runtime status`` (and upgrade, rollback, recover) find the state directory it started in.
    """
    if runtime_block:
        try:
            return LettaProcessRuntime.load(runtime_block)
        except ValueError as exc:
            raise RestoreTargetRefused(
                f"No saved Letta Process Runtime block named {runtime_block!r}; save one or "
                "pass --port for a server of its own."
            ) from exc
    if port is None:
        raise RestoreTargetRefused(
            "Starting the restored server needs a place to run it: pass --port (a free port "
            "on 127.0.0.1) or --runtime with a saved Letta Process Runtime block."
        )
    url = f"http://127.0.0.1:{port}"
    return LettaProcessRuntime(
        server_name=LettaServer(name=name or "", base_url=url).server_name, port=port
    )


@task(name="restore-preflight", cache_policy=NO_CACHE)
def preflight(
    store: ObjectStore,
    backup_set: str,
    database: str,
    server: str | None,
    force: bool,
    start: bool,
    runtime_block: str | None,
    port: int | None,
    reset: RequestedReset | None = None,
    name: str | None = None,
    allow_legacy: bool = False,
) -> tuple[RestorePlan, BackupManifest, LettaDatabase, LettaProcessRuntime | None]:
    target = target_database(database)
    profile = load_profile(server)
    server_name, set_id = resolve_set(store, backup_set, profile.name)
    manifest = load_manifest(store, server_name, set_id, allow_legacy)
    require_dump(manifest)
    target = database_for_set(target, manifest)
    where = f"{target.database_name} on {target.parts['host']}:{target.parts['port']}"
    tables = user_table_count(target)
    live_database = profile.database is not None and same_database(target, profile.database)
    if tables and live_database:
        raise RestoreTargetRefused(
            f"Database {where} is the live database of server {profile.name!r}; restore a "
            "server onto its own database with 'letta-ops rollback' (it takes a safety backup)."
        )
    if tables and not force:
        raise RestoreTargetRefused(
            f"Database {where} already holds {tables} tables; restore refuses to overwrite "
            "it: pass --force to replace Letta's tables there (what is not Letta's stays, "
            "as the plan lists), or name an empty database."
        )
    objects = require_intact(store, manifest)
    privileges = None
    if database_exists(target):
        target, privileges = with_reset_mode(target, reset)
    else:  # a database to create: only recreate can
        target = target.model_copy(update={"reset_mode": "recreate"})
    runtime = None
    if start:
        # The restored server demands the password of the server the set was taken from.
        runtime = restored_runtime(runtime_block, port, name).with_server_password(
            profile.server.password
        )
        if port_in_use(runtime.host, runtime.port):
            raise RestoreTargetRefused(
                f"Something already listens on {runtime.host}:{runtime.port}; pick a free "
                "port for the restored server."
            )
        install_runtime(manifest.letta_version, runtime.resolved_cache_dir(), runtime.index_url)
    plan = RestorePlan(
        set=f"{manifest.server}/{manifest.set_id}",
        set_created_at=manifest.created_at,
        letta_version=manifest.letta_version,
        target=target.redacted_uri(),
        target_tables_before=tables,
        replaces_existing=bool(tables),
        reset_mode=privileges["reset_mode"] if privileges else "recreate",
        left_alone=privileges["left_alone"] if privileges else [],
        objects_verified=objects,
        tables=len(manifest.row_counts),
        rows=sum(manifest.row_counts.values()),
        agents_in_set=len(manifest.agents),
        start=start,
        base_url=runtime.base_url if runtime else None,
        server_name=runtime.server_name if runtime else None,
    )
    return plan, manifest, target, runtime


@task(name="restore-set-into-target", cache_policy=NO_CACHE)
def restore_database_step(
    target: LettaDatabase,
    store: ObjectStore,
    manifest: BackupManifest,
    jobs: int,
    clock: PhaseClock | None = None,
) -> dict[str, Any]:
    return restore_database_from_set(target, store, manifest, jobs, (clock or PhaseClock()).phase)


@task(name="start-letta-on-target", cache_policy=NO_CACHE)
def start_server_step(
    runtime: LettaProcessRuntime, target: LettaDatabase, version: str, timeout: float
) -> dict[str, Any]:
    return start_set_version(runtime, target, version, timeout, log=get_run_logger().info)


@task(name="prove-target-matches-set", cache_policy=NO_CACHE)
def prove_step(
    runtime: LettaProcessRuntime, target: LettaDatabase, manifest: BackupManifest
) -> dict[str, Any]:
    password = runtime.password_to_require()
    server = LettaServer(name=runtime.server_name, base_url=runtime.base_url, password=password)
    with LettaClient(server) as client:
        return prove_server_matches_set(client, target, manifest)


def render_restore_markdown(report: RestoreReport) -> str:
    plan = report.plan
    lines = [
        f"# Restore {plan.set} onto {plan.target}: **{report.outcome}**",
        "",
        f"- Letta {plan.letta_version}, {plan.tables} tables, {plan.rows} rows, "
        f"{plan.agents_in_set} agents; {plan.objects_verified} objects verified",
    ]
    if plan.replaces_existing:
        lines.append(f"- replaced a database holding {plan.target_tables_before} tables")
    for d in report.count_differences or []:
        lines.append(f"- {d.table}: manifest {d.expected}, restored {d.actual}")
    if report.server:
        s = report.server
        lines.append(f"- started Letta {s.version} at {s.base_url} (pid {s.pid})")
    lines += phases_markdown(report.phases)
    return "\n".join(lines)


@flow(
    name="letta-restore",
    timeout_seconds=run_timeouts.RESTORE,
    flow_run_name=run_name("restore", "backup_set"),
)
def restore(
    backup_set: str,
    database: str,
    server: str | None = None,
    store: str | None = None,
    force: bool = False,
    start: bool = False,
    port: int | None = None,
    runtime: str | None = None,
    jobs: int = 2,
    start_timeout_seconds: float = 240,
    lock_timeout_seconds: float = 30,
    reset: RequestedReset | None = None,
    name: str | None = None,
    dry_run: bool = False,
    allow_legacy: bool = False,
) -> RestoreReport:
    """Restore ``backup_set`` onto ``database``: a saved Letta Database block's name, or
    ``postgresql://USER@HOST:PORT/DB`` with the password in ``PGPASSWORD`` (never in the URI).
    With ``dry_run``, stop after the pre-flight and return its plan (nothing changed).

    With ``start``, the restored server is named ``name`` (default ``127.0.0.1-PORT``): its
    state directory, history and lock live under that name, and the report says how later
    commands address it.
    """
    parameters = {"backup_set": backup_set, "force": force, "start": start, "port": port}
    clock = PhaseClock()
    with contextlib.ExitStack() as run:
        with clock.phase("start-up"):
            record = run.enter_context(audited_run("restore", server, parameters))
            logger = get_run_logger()
            object_store = open_backup_store(store, server)
            record.update(store=object_store)
        try:
            with clock.phase("pre-flight"):
                plan, manifest, target, letta_runtime = preflight(
                    object_store,
                    backup_set,
                    database,
                    server,
                    force,
                    start,
                    runtime,
                    port,
                    reset,
                    name,
                    allow_legacy,
                )
        except ValueError:
            record.update(outcome="refused")
            raise
        # The target is what this run changes: its history and lock are under its name.
        target_name = (
            letta_runtime.server_name
            if letta_runtime
            else sanitize_server_name(
                f"db-{target.parts['host']}-{target.parts['port']}-{target.database_name}"
            )
        )
        tag_current_run(target_name, "restore")
        record.update(
            server=target_name,
            versions_to=manifest.letta_version,
            backup_set=plan.set,
            target=plan.target,
        )
        if dry_run:
            record.update(outcome="planned")
            return RestoreReport(plan=plan, dry_run=True, outcome="planned", phases=clock.timings())
        report = RestoreReport(plan=plan, outcome="running")
        proof = None
        with destructive_section(
            "restore",
            target_name,
            record,
            lock_timeout_seconds=lock_timeout_seconds,
            database=target,
            phase=clock.phase,
        ):
            journal = record.journal()
            journal.begin(set=plan.set, target=plan.target, reset_mode=target.reset_mode)
            journal.enter("restore the set's dump")
            restored = restore_database_step(target, object_store, manifest, jobs, clock)
            report.count_differences = restored["count_differences"]
            report.sequences = restored["sequences"]["changes"]
            report.restore_warnings = restored["restore_warnings"]
            if not restored["count_differences"] and letta_runtime is not None:
                journal.enter(f"start {manifest.letta_version}")
                with clock.phase("start server"):
                    report.server = start_server_step(
                        letta_runtime, target, manifest.letta_version, start_timeout_seconds
                    )
                with clock.phase("prove server"):
                    proof = prove_step(letta_runtime, target, manifest)
                report.verification = proof
                report.address_with = RestoredAddress(
                    LETTA_BASE_URL=letta_runtime.base_url,
                    LETTA_OPS_SERVER_NAME=letta_runtime.server_name,
                    LETTA_PG_URI=plan.target,
                )
            journal.finish("restored")
            # An earlier restore onto this database that was interrupted is moot now.
            close_unfinished(journal.store, target_name, f"superseded by {record.record_id}")
        problems = restored["count_differences"] or (proof and not proof["ok"])
        report.outcome = "failed" if problems else "succeeded"
        report.finished_at = datetime.now(UTC)
        record.update(counts_after=manifest.row_counts if not problems else None)
        report.phases = clock.timings()
        with clock.phase("report"):
            publish_report(target_name, "restore", render_restore_markdown(report))
        report.phases = clock.timings()
        if problems:
            raise RestoreFailed(
                f"Restored {plan.set} onto {plan.target}, but it does not match the "
                f"manifest: {restored['count_differences'] or proof}"
            )
        logger.info("restored %s onto %s", plan.set, plan.target)
        return report


__all__ = ["RestoreFailed", "RestorePlan", "RestoreReport", "restore"]
