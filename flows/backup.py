"""The nightly backup, as the runbook it replaces:

1. check the server is healthy; note its version and the database's alembic revision;
2. list every agent and export each as an agent file (named by id);
3. pg_dump the whole database, counting rows in the dump's own snapshot;
4. write the manifest last: only now does the set exist;
5. verify the set from storage (checksums, dump table of contents) before calling it done;
6. publish a report; fail loudly if any agent could not be exported (unless allowed).
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.backup_store import apply_object_lock
from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.letta.api import LettaAPIError, LettaClient
from ..tasks.letta.versions import release_at_revision
from ..tasks.postgres.client_tools import PgToolError
from ..tasks.postgres.dump import (
    DumpResult,
    require_compression_supported,
    tool_version,
)
from ..tasks.postgres.dump_compression import chosen_compression
from ..tasks.postgres.dump_priority import chosen_dump_priority
from ..tasks.postgres.letta_inventory import agent_inventory
from ..tasks.postgres.letta_schema import alembic_revision
from ..tasks.runs import progress_events
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run, counts_summary
from ..tasks.runs.child_runs import fleet_slots
from ..tasks.runs.context import (
    current_flow_run_id,
    publish_report,
    run_name,
    tag_current_run,
)
from ..tasks.runs.phase_timings import PhaseClock, PhaseTiming, phases_markdown
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.agent_export import export_agents
from ..tasks.sets.catalog import keyless_warning, write_manifest
from ..tasks.sets.export_concurrency import chosen_export_concurrency
from ..tasks.sets.export_reuse import ReusePlan, full_exports_chosen
from ..tasks.sets.manifest import (
    DUMP_NAME,
    SQLITE_COPY_NAME,
    AgentEntry,
    BackupManifest,
    ManifestLock,
    ManifestObject,
    Purpose,
    SetEncryption,
    new_set_id,
    set_prefix,
)
from ..tasks.sets.retention import safety_pin_until
from ..tasks.sqlite.online_copy import SqliteCopyFailed
from ..tasks.store.encryption_keys import SCHEME as ENCRYPTION_SCHEME
from ..tasks.store.objects import ObjectStore, StoredObject
from .steps.agent_reuse import reuse_plan
from .steps.database_dump import dump_database_task, dump_failure
from .steps.sqlite_backup import (
    StoredSqliteCopy,
    copy_sqlite_task,
    inspect_sqlite_server,
    sqlite_manifest_fields,
)
from .verify import ObjectProblem, VerificationFailed, VerifyReport, verify_written_set


class BackupFailed(Failed):
    """The backup ran but did not produce what the operator asked for."""


#: The error recorded for agents of a server that was down: no file, the dump holds them.
SERVER_DOWN = "not exported: the server was down (the pg_dump holds this agent)"


@task(name="inspect-server", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def inspect_server(profile: ServerProfile, server_down_ok: bool = False) -> dict[str, Any]:
    """Version, alembic revision and agents. With ``server_down_ok`` (the safety backup of a
    rollback or recovery of a server that is down) a server that does not answer is described
    from its database: the release its alembic revision belongs to, the agents by SQL."""
    database = profile.require_database()
    revision = alembic_revision(database)
    try:
        with LettaClient(profile.server, retries=1 if server_down_ok else 3) as client:
            health = client.health()
            agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
    except LettaAPIError as exc:
        if not (server_down_ok and exc.status == 0):
            raise
        version = release_at_revision(revision)
        if version is None:
            raise BackupFailed(
                f"The server does not answer and its database's alembic revision {revision!r} "
                "is no known release; start it, then back it up."
            ) from exc
        inventory = agent_inventory(database)
        agents = [{"id": i, "name": v["name"]} for i, v in sorted(inventory.items())]
        return {
            "version": version,
            "status": "down",
            "alembic_revision": revision,
            "agents": agents,
        }
    return {
        "version": health.get("version"),
        "status": health.get("status"),
        "alembic_revision": revision,
        "agents": agents,
    }


@task(name="export-agents", cache_policy=NO_CACHE)
def export_agents_task(
    profile: ServerProfile,
    store: ObjectStore,
    prefix: str,
    state: dict[str, Any],
    concurrency: int,
    clock: PhaseClock | None = None,
    full_exports: bool = False,
) -> tuple[list[AgentEntry], list[StoredObject]]:
    """Fingerprint the agents and export every one not unchanged since the previous verified
    set (whose file is copied instead); timed as the ``fingerprints+parent`` and ``export`` phases
    here, in the task's own thread, because they overlap the dump (the flow only sees when it
    waited for them)."""
    clock = clock or PhaseClock()
    logger = get_run_logger()
    agents = state["agents"]
    plan = ReusePlan()
    if profile.sqlite is None:  # SQLite servers have no fingerprint: every agent is exported
        with clock.phase("fingerprints+parent"):
            plan = reuse_plan(
                profile.require_database(),
                store,
                profile.name,
                state["version"],
                state["alembic_revision"],
                full_exports,
                logger.warning,
            )
        logger.info("%s", plan.describe([a["id"] for a in agents], full_exports))
    progress = progress_events.reporter()
    progress.start("export agents", len(agents), "agents")
    try:
        with clock.phase("export"), LettaClient(profile.server) as client:
            return export_agents(
                client,
                agents,
                store,
                prefix,
                concurrency,
                on_done=lambda _e: progress.advance("export agents"),
                plan=plan,
                on_warning=logger.warning,
            )
    finally:
        progress.finish("export agents")


def store_runtime_files(
    profile: ServerProfile, store: ObjectStore, prefix: str
) -> dict[str, StoredObject]:
    """The files the runtime changes when it starts a version (a compose file), as they are
    now: a rollback to this set puts them back. A plain call, like the manifest's write: a
    task run's bookkeeping cost more than these few writes (issue #32)."""
    return {
        name: store.put_bytes(f"{prefix}runtime/{name}", data)
        for name, data in profile.runtime.snapshot().items()
    }


def build_manifest(
    profile: ServerProfile,
    set_id: str,
    prefix: str,
    started: datetime,
    state: dict[str, Any],
    entries: list[AgentEntry],
    agent_objects: list[StoredObject],
    dump: DumpResult | StoredSqliteCopy,
    purpose: str,
    pinned: bool,
    runtime_files: dict[str, StoredObject] | None = None,
    object_lock: ManifestLock | None = None,
    encryption: SetEncryption | None = None,
) -> BackupManifest:
    runtime_files = runtime_files or {}
    stored = [*agent_objects, dump.stored, *runtime_files.values()]
    objects = {o.key: ManifestObject.of(o) for o in stored}
    return BackupManifest(
        set_id=set_id,
        server=profile.name,
        created_at=started,
        completed_at=datetime.now(UTC),
        flow_run_id=current_flow_run_id(),
        purpose=purpose,
        pinned=pinned,
        pinned_until=safety_pin_until(purpose, started) if pinned else None,
        letta_version=state["version"],
        alembic_revision=state["alembic_revision"],
        base_url=profile.server.base_url,
        encryption_key_configured=_encryption_key_configured(profile),
        row_counts=dump.row_counts,
        dump=dump.stored.key,
        agents=entries,
        objects=objects,
        **_database_fields(profile, dump),
        runtime=profile.runtime.describe(),
        runtime_files={name: o.key for name, o in runtime_files.items()},
        object_lock=object_lock,
        encryption=encryption,
    )


def set_encryption(stored: list[StoredObject]) -> SetEncryption | None:
    """The set's client-side encryption for the manifest: the scheme and the key id (never
    the key); None when its objects were stored as written. A set is encrypted as a whole:
    one object written plain beside encrypted ones would be a bug, and fails the backup."""
    key_ids = {getattr(o, "key_id", None) for o in stored}
    if key_ids == {None}:
        return None
    if None in key_ids or len(key_ids) != 1:
        raise BackupFailed(
            "The set's objects were not all encrypted with one key; no manifest was written."
        )
    return SetEncryption(scheme=ENCRYPTION_SCHEME, key_id=key_ids.pop())


def manifest_lock(store: ObjectStore) -> ManifestLock | None:
    """The lock the store gives every object of the set (None: unlocked), for the manifest."""
    lock = getattr(store, "lock", None)
    retention = store.retention
    if lock is None or retention is None or retention.retain_until is None:
        return None
    return ManifestLock(mode=retention.mode, days=lock.days, retain_until=retention.retain_until)


def _encryption_key_configured(profile: ServerProfile) -> bool | None:
    """Whether LETTA_ENCRYPTION_KEY reaches the server; recorded, never stored."""
    names = profile.runtime.configured_variables()
    if names is not None and "LETTA_ENCRYPTION_KEY" in names:
        return True
    return bool(os.environ.get("LETTA_ENCRYPTION_KEY")) or None


def _database_fields(profile: ServerProfile, dump: DumpResult | StoredSqliteCopy) -> dict:
    """What the manifest says about the database: a pg_dump's PostgreSQL, or a SQLite copy."""
    from importlib.metadata import version

    ours = {"letta-ops": version("letta-ops"), "prefect": version("prefect")}
    if isinstance(dump, StoredSqliteCopy) and profile.sqlite is not None:
        fields = sqlite_manifest_fields(profile.sqlite, dump)
        return {**fields, "tool_versions": {**ours, **fields["tool_versions"]}}
    database = profile.require_database()
    return {
        "database_name": database.database_name,
        "db_schema": database.db_schema or "public",
        "postgres_version": dump.postgres_version,
        "pgvector_version": dump.pgvector_version,
        "pgvector_schema": dump.pgvector_schema,
        "left_out": dump.left_out,
        "table_bytes": dump.table_bytes,
        "dump_compression": dump.compression,
        "tool_versions": {**ours, "pg_dump": tool_version(database)},
    }


class FailedAgent(ReportPart):
    id: str
    name: str
    error: str | None = Field(description="Why its export failed (the dump still holds it).")


class BackupReport(FlowReport):
    """``backup()``'s result and ``letta-ops backup --json``."""

    set: str = Field(description="SERVER/SET_ID of the new set.")
    server: str = Field(description="The server's name.")
    letta_version: str | None = Field(description="Letta's version when backed up.")
    alembic_revision: str | None = Field(description="The database's alembic revision.")
    agents_total: int
    agents_exported: int = Field(
        description="Agents with an agent file in the set (reused included)."
    )
    agents_reused: int = Field(
        default=0,
        description="Of those, files copied from the previous verified set (the agent's rows "
        "unchanged since) instead of exported again.",
    )
    agents_failed: list[FailedAgent] = Field(description="Agents without an agent file.")
    tables: int = Field(description="Tables counted in the dump's snapshot.")
    rows: int = Field(description="Rows counted in the dump's snapshot.")
    dump_bytes: int
    total_bytes: int = Field(description="Every object of the set, as stored.")
    verified: bool = Field(description="The set passed verification from storage.")
    verification_problems: list[ObjectProblem]
    purpose: str
    pinned: bool
    encryption_key_id: str | None = Field(description="None: not encrypted on the client.")
    object_lock: ManifestLock | None = Field(description="None: written without Object Lock.")
    phases: list[PhaseTiming] = Field(
        default_factory=list,
        description="Each phase's start and seconds, in order of start (export and "
        "dump+upload overlap); the audit record is written after the report.",
    )


def backup_report(
    manifest: BackupManifest,
    verification: VerifyReport,
    phases: list[PhaseTiming] | None = None,
) -> BackupReport:
    failed = manifest.failed_agents
    return BackupReport(
        set=f"{manifest.server}/{manifest.set_id}",
        server=manifest.server,
        letta_version=manifest.letta_version,
        alembic_revision=manifest.alembic_revision,
        agents_total=len(manifest.agents),
        agents_exported=len(manifest.agents) - len(failed),
        agents_reused=sum(a.reused_from is not None for a in manifest.agents),
        agents_failed=[FailedAgent(id=a.id, name=a.name, error=a.error) for a in failed],
        tables=len(manifest.row_counts),
        rows=sum(manifest.row_counts.values()),
        dump_bytes=manifest.objects[manifest.dump].size,
        total_bytes=sum(o.size for o in manifest.objects.values()),
        verified=verification.ok,
        verification_problems=verification.problems,
        purpose=manifest.purpose,
        pinned=manifest.pinned,
        encryption_key_id=manifest.encryption.key_id if manifest.encryption else None,
        object_lock=manifest.object_lock,
        phases=phases or [],
    )


def render_backup_markdown(report: BackupReport) -> str:
    lines = [
        f"# Backup {report.set}",
        "",
        f"- Letta {report.letta_version} (alembic `{report.alembic_revision}`)",
        f"- agents exported: **{report.agents_exported} of {report.agents_total}**"
        + (f" ({report.agents_reused} unchanged, reused)" if report.agents_reused else ""),
        f"- database: {report.tables} tables, {report.rows} rows, dump {report.dump_bytes} bytes",
        f"- verified from storage: **{'yes' if report.verified else 'NO'}**",
        "- encrypted on the client: "
        + (f"yes, key id `{report.encryption_key_id}`" if report.encryption_key_id else "no"),
    ]
    if report.object_lock:
        lock = report.object_lock
        lines.append(
            f"- locked: S3 Object Lock {lock.mode.lower()} until {lock.retain_until.isoformat()}"
        )
    lines += phases_markdown(report.phases)
    if report.agents_failed:
        lines += ["", "## Agents whose export failed (the pg_dump still holds them)", ""]
        lines += [f"- `{a.id}` {a.name!r}: {a.error}" for a in report.agents_failed]
    return "\n".join(lines)


@flow(
    name="letta-backup",
    flow_run_name=run_name("backup"),
    log_prints=False,
    timeout_seconds=run_timeouts.BACKUP,
)
def backup(
    server: str | None = None,
    store: str | None = None,
    allow_partial_agents: bool = False,
    concurrency: int | None = None,
    purpose: Purpose = "scheduled",
    pinned: bool = False,
    server_down_ok: bool = False,
    compression: str | None = None,
    concurrency_limits: list[str] | None = None,
    lock_days: float | None = None,
    lock_mode: str | None = None,
    dump_priority: str | None = None,
    full_exports: bool | None = None,
) -> BackupReport:
    """Back up one Letta server into a new, verified, write-once backup set.

    ``lock_days`` / ``lock_mode`` (``--lock-days``, else ``LETTA_OPS_LOCK_DAYS`` /
    ``LETTA_OPS_LOCK_MODE``, else the S3 store block's fields): every object of the set is
    written with S3 Object Lock retention until the run's start plus that many days, recorded
    in the manifest. A bucket without Object Lock is refused before anything is written.

    ``compression`` is pg_dump's ``--compress`` (``--compress``, else ``LETTA_OPS_COMPRESS``,
    else the Letta Database block's ``compression``, else ``gzip:1``; ``none``, gzip levels, and
    zstd/lz4 with a client built with them), recorded in the manifest.

    The load on the live server is bounded: ``concurrency`` agent exports in flight
    (``--concurrency``, else ``LETTA_OPS_EXPORT_CONCURRENCY``, else 1) and pg_dump at
    ``dump_priority`` (``--dump-priority``, else ``LETTA_OPS_DUMP_PRIORITY``, else ``low``:
    niceness 10 and the idle I/O class, logged when the host refuses either).

    Agents unchanged since the previous verified set of the server at the same Letta version
    and alembic revision (their rows' fingerprints equal) are not exported again: their files
    are copied from that set, checked against its authenticated manifest
    (``tasks/sets/export_reuse.py``). ``full_exports`` (``--full-exports``, else
    ``LETTA_OPS_FULL_EXPORTS``) exports every agent.

    ``server_down_ok`` (safety backups before a rollback of a server that is down): a server
    that does not answer is backed up from its database alone, every agent listed as not
    exported; the dump is the lossless artifact.

    ``server`` names saved blocks (None: LETTA_BASE_URL / LETTA_PG_URI); ``store`` is a
    repository URL (None: LETTA_OPS_STORE or the server's saved store block).

    ``concurrency_limits`` (set by a fleet backup): global concurrency limits this run holds a
    slot of while it runs, so a fleet never backs up more at once per store or database host.
    """
    clock = PhaseClock()
    with contextlib.ExitStack() as run:
        # Start-up: the audit record opened, a fleet's slot (if any) waited for, the
        # server's blocks and the store loaded.
        with clock.phase("start-up"):
            audit = run.enter_context(audited_run("backup", server))
            run.enter_context(fleet_slots(concurrency_limits))
            logger = get_run_logger()
            profile = load_profile(server, need_database=True)
            object_store = apply_object_lock(open_backup_store(store, server), lock_days, lock_mode)
            audit.update(server=profile.name, store=object_store)
            tag_current_run(profile.name, "backup")
            if warning := keyless_warning(object_store):
                logger.warning("%s.", warning)
        started = datetime.now(UTC)

        with clock.phase("pre-flight"):
            priority = chosen_dump_priority(dump_priority)
            concurrency = chosen_export_concurrency(concurrency)
            full_exports = full_exports_chosen(full_exports)
            if profile.sqlite is None:
                database = profile.require_database()
                compression = chosen_compression(compression, database.compression)
                require_compression_supported(database, compression)
                state = inspect_server(profile, server_down_ok)
            else:
                state = inspect_sqlite_server(profile, profile.sqlite)
        logger.info(
            "Letta %s at %s, %d agents",
            state["version"],
            profile.server.base_url,
            len(state["agents"]),
        )
        set_id = new_set_id(started, current_flow_run_id() or "")
        prefix = set_prefix(profile.name, set_id)
        audit.update(backup_set=f"{profile.name}/{set_id}", versions_from=state["version"])

        # Exports (the API, in a worker thread) and the dump (PostgreSQL) overlap: the set
        # takes as long as the slower of the two, not their sum. The manifest still comes last.
        exports = None
        if state["status"] != "down":
            exports = export_agents_task.submit(
                profile, object_store, prefix, state, concurrency, clock, full_exports
            )
        try:
            # pg_dump and the row counts in its own snapshot are one step (dump_to_store).
            with clock.phase("counts+dump+upload"):
                if profile.sqlite is None:
                    dump = dump_database_task(
                        profile,
                        object_store,
                        prefix + DUMP_NAME,
                        compression,
                        priority,
                        state["alembic_revision"],
                        clock,
                    )
                else:
                    dump = copy_sqlite_task(profile.sqlite, object_store, prefix + SQLITE_COPY_NAME)
        except (PgToolError, sa.exc.DBAPIError, SqliteCopyFailed) as exc:
            if exports is not None:
                exports.wait()  # nothing keeps writing into the set after the run ends
            raise BackupFailed(
                f"The database dump failed, so no backup set was committed (no manifest): "
                f"{dump_failure(exc)}. Check that the database is reachable and run the backup "
                "again."
            ) from exc
        if exports is None:  # the dump is the whole backup: it is lossless
            entries = [AgentEntry(**a, error=SERVER_DOWN) for a in state["agents"]]
            agent_objects: list[StoredObject] = []
        else:
            with clock.phase("export wait"):
                entries, agent_objects = exports.result()
        with clock.phase("manifest"):
            runtime_files = store_runtime_files(profile, object_store, prefix)
            manifest = build_manifest(
                profile,
                set_id,
                prefix,
                started,
                state,
                entries,
                agent_objects,
                dump,
                purpose,
                pinned,
                runtime_files,
                manifest_lock(object_store),
                set_encryption([*agent_objects, dump.stored, *runtime_files.values()]),
            )
            write_manifest(object_store, manifest)  # the commit marker, last
        audit.update(
            counts_before=counts_summary(manifest.row_counts, len(manifest.agents)),
            alembic_revision=manifest.alembic_revision,
            purpose=purpose,
        )
        try:
            with clock.phase("verification"):
                verification = verify_written_set(
                    object_store,
                    profile.name,
                    set_id,
                    {"backup_set": f"{profile.name}/{set_id}", "server": server, "store": store},
                )
        except VerificationFailed as exc:
            raise BackupFailed(
                f"Backup set {profile.name}/{set_id} was written but failed verification: {exc}"
            ) from exc

        report = backup_report(manifest, verification, clock.timings())
        audit.update(
            agents_exported=report.agents_exported,
            agents_failed=[a.id for a in report.agents_failed],
            verified=report.verified,
        )
        with clock.phase("report"):
            publish_report(
                profile.name,
                "backup",
                render_backup_markdown(report),
                [
                    {
                        "id": a.id,
                        "name": a.name,
                        "file": a.file or "",
                        "bytes": manifest.objects[a.file].size if a.file else 0,
                        "error": a.error or "",
                        "reused_from": a.reused_from or "",
                    }
                    for a in manifest.agents
                ],
            )
        report.phases = clock.timings()
        if report.agents_failed and not allow_partial_agents:
            names = ", ".join(f"{a.id} ({a.name!r})" for a in report.agents_failed)
            raise BackupFailed(
                f"{len(report.agents_failed)} agent(s) could not be exported: {names}; the "
                f"pg_dump in {report.set} still holds them. Rename them or rerun with "
                "--allow-partial-agents."
            )
        logger.info("backup set %s verified", report.set)
        return report
