"""Upgrade a Letta server to a pinned version, or put it back exactly where it was.

The runbook this replaces, as one run:

1. pre-flight: healthy, current version and alembic revision known, target installable and
   newer, disk room for the dump, agent names checked against the target's rule (the plan);
2. take the one destructive lock of this server (a strict Prefect global concurrency limit);
3. optionally wait for an operator's approval;
4. back up (the backup flow, verified, pinned); nothing destructive happens before this;
5. strategy *migrate* (lossless, default): stop -> alembic upgrade to the target -> repair
   sequences -> start the target -> verify every agent by id, message and block counts;
   strategy *rebuild* (the old runbook): rename agents the versions refuse -> export them ->
   stop -> drop/recreate the database -> pgvector -> migrate and start the target -> repair
   sequences -> import the agent files -> verify by name, and report what files do not carry;
6. any failure after the first destructive step rolls back inside a Prefect transaction:
   stop, restore the dump into a recreated database, start the old version, prove the counts.

A SQLite server (``LETTA_OPS_SQLITE_DB``) moves to PostgreSQL first (``target_database`` or
``LETTA_OPS_MOVE_TO_URI``), then migrates there: :mod:`letta_ops.flows.steps.sqlite_upgrade`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

from ..blocks.server_profile import load_profile, open_backup_store
from ..tasks.audit.rehearsal_history import rehearsal_is_current
from ..tasks.errors import database_error_message
from ..tasks.letta.versions import ALEMBIC_HEADS
from ..tasks.postgres.letta_inventory import (
    agent_inventory,
)
from ..tasks.postgres.privileges import RequestedReset
from ..tasks.runs.audit_record import audited_run, counts_summary, server_counts
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.phase_timings import PhaseClock
from ..tasks.sets.catalog import load_manifest
from ..tasks.sets.manifest import set_prefix
from .backup import backup
from .reports.upgrade import (
    Strategy,
    UpgradeReport,
    audit_renames,
    render_upgrade_markdown,
    rollback_outcome,
)
from .steps.destructive_run import destructive_section
from .steps.server_steps import undoable
from .steps.sqlite_upgrade import refuse_move_target_on_postgres, upgrade_sqlite_server
from .steps.upgrade_steps import (
    UpgradeFailed,
    UpgradeRefused,
    UpgradeState,
    newest_backup_at,
    planned_upgrade,
    preflight,
    run_migrate,
    run_rebuild,
    undo_upgrade,
)

if TYPE_CHECKING:
    from .rehearse import RehearsalReport


@flow(name="letta-upgrade", flow_run_name=run_name("upgrade", "to_version"))
def upgrade(
    to_version: str,
    server: str | None = None,
    store: str | None = None,
    strategy: Strategy = "migrate",
    dry_run: bool = False,
    approval: bool = False,
    lock_timeout_seconds: float = 0,
    start_timeout_seconds: float = 240,
    reset: RequestedReset | None = None,
    require_rehearsal: bool = False,
    rehearse: bool = False,
    target_database: str | None = None,
) -> UpgradeReport | RehearsalReport:
    """Upgrade one server to ``to_version`` by ``strategy``; roll back on any failure.

    ``require_rehearsal`` (on in the deployment): refuse unless a successful rehearsal of these
    versions and strategy exists that is not older than the server's newest backup.
    ``rehearse``: run the upgrade on a restored copy instead (:mod:`letta_ops.flows.rehearse`); the
    server is not touched.

    ``reset`` says how a database is emptied before a restore or rebuild (``recreate`` or
    ``in-place``); by default the database block's setting, else whatever the role may do.

    ``target_database``: a SQLite server's PostgreSQL database to move into first (a saved
    Letta Database block; else ``LETTA_OPS_MOVE_TO_URI``).
    """
    if rehearse:
        from .rehearse import rehearse as rehearse_flow

        return rehearse_flow(
            to_version, server, store, strategy, start_timeout_seconds=start_timeout_seconds
        )
    clock = PhaseClock()
    with audited_run("upgrade", server) as audit:
        clock.lap("pre-flight")
        logger = get_run_logger()
        profile = load_profile(server, need_database=True)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "upgrade")
        if profile.sqlite is not None:  # the move to PostgreSQL first, then the migration
            return upgrade_sqlite_server(
                profile,
                to_version,
                strategy,
                target_database=target_database,
                store=store,
                server=server,
                dry_run=dry_run,
                audit=audit,
                clock=clock,
                safety_backup=lambda: backup(
                    server=server,
                    store=store,
                    allow_partial_agents=True,
                    purpose="pre-upgrade",
                    pinned=True,
                ),
                approval=approval,
                lock_timeout_seconds=lock_timeout_seconds,
                start_timeout_seconds=start_timeout_seconds,
                require_rehearsal=require_rehearsal,
            )
        refuse_move_target_on_postgres(profile, target_database)
        plan = preflight(profile, to_version, strategy, reset)
        # Every later step, the automatic rollback included, empties the database this way.
        profile.database = profile.require_database().model_copy(
            update={"reset_mode": plan.reset_mode}
        )
        audit.update(
            versions_from=plan.from_version,
            versions_to=plan.to_version,
            strategy=strategy,
            renames=audit_renames(plan.final_map()) if strategy == "rebuild" else None,
        )
        plan.rehearsal_current = rehearsal_is_current(
            plan.rehearsal.model_dump(mode="json") if plan.rehearsal else None,
            newest_backup_at(store, server, profile.name),
        )
        if require_rehearsal and not plan.rehearsal_current and not dry_run:
            audit.update(outcome="refused")
            raise UpgradeRefused(
                f"No rehearsal of {plan.from_version} -> {plan.to_version} "
                f"({strategy}) newer than the newest backup of {profile.name}; run "
                f"'letta-ops upgrade --to {plan.to_version} --strategy {strategy} "
                "--rehearse' first (or turn require_rehearsal off)."
            )
        report = UpgradeReport(plan=plan, dry_run=dry_run, outcome="planned")
        if dry_run:
            return planned_upgrade(report, clock, audit, profile.name)
        with destructive_section(
            "upgrade",
            profile.name,
            audit,
            report=report,
            approval=approval,
            lock_timeout_seconds=lock_timeout_seconds,
            database=profile.database,
            phase=clock.lapping,
        ):
            clock.lap("backup")
            backup_report = backup(
                server=server,
                store=store,
                allow_partial_agents=True,
                purpose="pre-upgrade",
                pinned=True,
            )
            object_store = open_backup_store(store, server)
            audit.update(backup_set=backup_report.set, store=object_store)
            manifest = load_manifest(object_store, *backup_report.set.split("/"))
            clock.lap("counts before")
            state = UpgradeState(
                profile=profile,
                store=object_store,
                manifest=manifest,
                old_version=plan.from_version,
                before_agents=agent_inventory(profile.require_database()),
                clock=clock,
                renames=plan.rename_map() if strategy == "rebuild" else {},
                final_renames=plan.final_map() if strategy == "rebuild" else None,
            )
            audit.update(counts_before=counts_summary(manifest.row_counts, state.before_agents))
            report.backup_set = backup_report.set
            report.started_at = datetime.now(UTC)
            state.journal = audit.journal(
                object_store, set_prefix(manifest.server, manifest.set_id)
            )
            state.journal.begin(
                backup_set=backup_report.set,
                from_version=plan.from_version,
                to_version=plan.to_version,
                strategy=strategy,
                reset_mode=plan.reset_mode,
                target_revision=ALEMBIC_HEADS.get(plan.to_version),
            )
            runner = run_migrate if strategy == "migrate" else run_rebuild
            try:
                with undoable(state, lambda: undo_upgrade(state)):
                    result = runner(state, plan.to_version, start_timeout_seconds)
            except Exception as exc:
                cause = f"at step {state.step}: {database_error_message(exc)}"
                rolled = state.rollback
                report.outcome = "failed, rolled back" if (rolled or {}).get("ok") else "failed"
                report.error = cause
                report.rollback = rolled
                clock.stop()
                report.phases = clock.timings()
                publish_report(profile.name, "upgrade", render_upgrade_markdown(report))
                if rolled is None or rolled.get("ok"):  # consistent again; else: recover
                    state.journal.finish("failed, rolled back" if rolled else "failed, unchanged")
                audit.update(
                    rollback_outcome=rollback_outcome(rolled),
                    counts_after=server_counts(profile.require_database()) if rolled else None,
                )
                raise UpgradeFailed(
                    f"Upgrade of {profile.name} to {plan.to_version} failed ({cause}); "
                    + (
                        "no rollback was needed: nothing destructive had happened"
                        if rolled is None
                        else f"rollback restored Letta {state.old_version} from {backup_report.set}"
                        if rolled.get("ok")
                        else f"rollback FAILED to restore Letta {state.old_version} "
                        f"({rolled.get('error') or 'counts differ'}): the server may be down; "
                        f"once the cause is fixed run 'letta-ops rollback --to "
                        f"{backup_report.set}'"
                    )
                ) from exc
        clock.stop()
        report.phases = clock.timings()
        state.journal.finish("succeeded")
        report.downtime_seconds = result["downtime_seconds"]
        report.downtime_window = result["downtime_window"]
        report.sequences = result["sequences"]
        report.agents_after = result["agents_after"]
        report.verification = result["verification"]
        report.not_carried = result.get("not_carried")
        report.outcome = "succeeded"
        report.finished_at = datetime.now(UTC)
        audit.update(counts_after=server_counts(profile.require_database()))
        audit.update(downtime_seconds=report.downtime_seconds)  # letta-ops metrics reads it
        publish_report(
            profile.name,
            "upgrade",
            render_upgrade_markdown(report),
            [row.model_dump(mode="json") for row in report.verification],
        )
        logger.info("upgraded %s to %s", profile.name, plan.to_version)
        return report
