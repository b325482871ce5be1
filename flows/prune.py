"""Prune old backup sets by a grandfather-father-son policy.

Runbook: list the sets, plan what to keep (newest N, one per day/week/month, the newest
verified set and every pinned set always) and what to delete (the rest, plus incomplete sets
older than a day); keep the sets S3 Object Lock still holds, saying until when, and every set
that cannot be believed (quarantined: legacy or untrusted); show the plan; delete only when
told to execute.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.server_profile import open_backup_store
from ..tasks.audit.store import preserve_set_records
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.catalog import list_backup_sets, summarize_set
from ..tasks.sets.retention import (
    RetentionPlan,
    RetentionPolicy,
    execute_plan,
    plan_around_locks,
)
from ..tasks.store.objects import ObjectStore


class PruneRow(ReportPart):
    """One set and what the policy does with it."""

    server: str
    set_id: str
    created_at: datetime | None
    action: str = Field(description="keep or delete.")
    reasons: str = Field(description="Why, comma-separated (the rules that keep it, or why not).")
    verified: bool
    pinned: bool
    pinned_until: datetime | None = Field(
        default=None, description="When the pin ends; None: for good."
    )
    trust: str = Field(
        default="keyless", description="trusted, keyless, legacy or untrusted (quarantined)."
    )
    size: int = Field(description="Bytes stored.")
    lock_mode: str | None = Field(description="S3 Object Lock mode, None: not locked.")
    locked_until: datetime | None
    prunable_after: datetime | None = Field(description="When a lock stops holding it.")


class PruneReport(FlowReport):
    """``prune()``'s result and ``letta-ops prune --json``."""

    executed: bool = Field(description="False: a plan, nothing was deleted.")
    keep: int
    held_by_lock: int = Field(description="Sets kept only because Object Lock holds them.")
    delete: int = Field(description="Sets the plan deletes.")
    deleted: list[str] = Field(description="Prefixes actually deleted.")
    quarantined: list[str] = Field(
        default_factory=list,
        description="Sets kept because they cannot be believed (legacy or untrusted): never "
        "deleted by retention; 'letta-ops backups forget SET' removes one.",
    )
    sets: list[PruneRow]
    policy: RetentionPolicy


@task(name="plan-retention", cache_policy=NO_CACHE)
def plan_retention_task(
    store: ObjectStore, server: str | None, policy: RetentionPolicy
) -> RetentionPlan:
    """Plan around the Object Locks the store reports for the sets it would delete."""
    return plan_around_locks(store, list_backup_sets(store, server), policy, datetime.now(UTC))


@task(name="apply-retention", cache_policy=NO_CACHE)
def apply_retention_task(store: ObjectStore, plan: RetentionPlan) -> list[str]:
    """Carry out a retention plan; never cached, since a delete must actually happen."""
    return execute_plan(
        store, plan, log=get_run_logger().info, reread=lambda s: summarize_set(store, s)
    )


def keep_audit_records(store: ObjectStore, prefixes: list[str]) -> None:
    """Move the audit history out of the sets about to go (never fails the prune)."""
    try:
        preserve_set_records(store, prefixes)
    except Exception as exc:  # noqa: BLE001 - auditing never fails a flow
        get_run_logger().warning("audit: could not preserve the records of pruned sets: %s", exc)


@flow(name="letta-prune", flow_run_name=run_name("prune"), timeout_seconds=run_timeouts.PRUNE)
def prune(
    server: str | None = None,
    store: str | None = None,
    keep_last: int = 7,
    keep_daily: int = 7,
    keep_weekly: int = 4,
    keep_monthly: int = 6,
    execute: bool = False,
) -> PruneReport:
    """Plan (and with ``execute`` apply) retention; ``server`` None means every server."""
    with audited_run("prune", server or "all") as audit:
        policy = RetentionPolicy(
            keep_last=keep_last,
            keep_daily=keep_daily,
            keep_weekly=keep_weekly,
            keep_monthly=keep_monthly,
        )
        object_store = open_backup_store(store, server)
        audit.update(store=object_store)
        tag_current_run(server or "all", "prune")
        plan = plan_retention_task(object_store, server, policy)
        if execute:
            keep_audit_records(object_store, [d.set.prefix for d in plan.delete])
        deleted = apply_retention_task(object_store, plan) if execute else []
        rows = plan.to_rows()
        held = [d for d in plan.keep if d.held_by_lock]
        audit.update(
            sets_kept=len(plan.keep),
            sets_held_by_lock=len(held),
            sets_to_delete=len(plan.delete),
            sets_deleted=[str(d) for d in deleted],
            executed=execute,
        )
        summary = (
            f"# Prune {'(executed)' if execute else '(plan only)'}\n\n"
            f"- keep {len(plan.keep)} set(s), delete {len(plan.delete)}\n"
            f"- deleted: {len(deleted)}"
        )
        for decision in held:
            summary += f"\n- kept by S3 Object Lock: {decision.set.set_id}: {decision.reasons[0]}"
        quarantined = [d for d in plan.keep if d.set.quarantined]
        for decision in quarantined:
            summary += f"\n- quarantined: {decision.set.set_id}: {decision.reasons[0]}"
        publish_report(server or "all", "prune", summary, rows)
        return PruneReport(
            executed=execute,
            keep=len(plan.keep),
            held_by_lock=len(held),
            delete=len(plan.delete),
            deleted=deleted,
            quarantined=[f"{d.set.server}/{d.set.set_id}" for d in quarantined],
            sets=rows,
            policy=policy,
        )
