"""Clean up folders (sources): orphans, duplicates and phantoms.

The runbook this replaces, as one run:

1. survey every folder (all pages) and the agents each is attached to; a folder whose agents
   the API cannot list is a phantom;
2. plan: phantoms, duplicates (suffixed copies with the same content, attached to nothing),
   orphans (attached to nothing); a folder attached to an agent is never removed;
3. with ``sql``, ask the database about each phantom (soft-deleted? an id the API refuses?
   attached to a live agent?);
4. stop here unless ``execute``: the plan is the report;
5. take the server's destructive lock; delete orphans and duplicates through the API,
   re-checking each one's agents just before;
6. with ``sql``: back up the server (verified), then delete the removable phantom rows in one
   transaction;
7. survey again and publish what was removed and what is left.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import Field

from ..blocks.server_profile import load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.letta.source_cleanup import (
    CleanupPlan,
    FolderCategory,
    delete_through_api_task,
    plan_cleanup,
    survey_folders_task,
)
from ..tasks.letta.source_phantom_rows import (
    delete_phantom_rows_task,
    inspect_phantom_rows_task,
)
from ..tasks.postgres.privileges import require_table_privileges
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.lock import destructive_lock
from ..tasks.runs.report import FlowReport, ReportPart
from .backup import backup

#: How long a real run waits for another destructive run on the server to finish.
LOCK_WAIT_SECONDS = 10.0


class FolderToRemove(ReportPart):
    """A folder the cleanup removes (in a plan: would remove), and what became of it."""

    id: str
    name: str
    category: FolderCategory = Field(description="orphan, duplicate or phantom.")
    reason: str = Field(description="Why it is removed.")
    duplicate_of: str | None = Field(description="The folder it copies (duplicates only).")
    outcome: str = Field(description="planned, deleted..., kept: why, needs --sql, ...")


class KeptFolder(ReportPart):
    """A folder that looks removable but is kept on purpose."""

    id: str
    name: str
    reason: str = Field(description="Why it is kept (e.g. attached to an agent).")


class SourceCleanupReport(FlowReport):
    """``cleanup_sources()``'s result and ``letta-ops cleanup-sources --json``."""

    server: str
    executed: bool = Field(description="False: a plan, nothing was deleted.")
    sql: bool = Field(description="Phantom rows were (to be) removed in SQL.")
    backup_set: str | None = Field(
        default=None, description="The verified pre-cleanup set (None: no SQL step ran)."
    )
    removed: int | None = Field(default=None, description="Folders removed (None: a plan).")
    left: int | None = Field(
        default=None, description="Removable folders still there afterwards (None: a plan)."
    )
    folders_total: int = Field(description="Folders the survey found.")
    orphans: int
    duplicates: int
    phantoms: int = Field(description="Folders the API lists but cannot act on.")
    remove: list[FolderToRemove]
    kept: list[KeptFolder]


class CleanupFailed(Failed):
    """The cleanup ran, but something it should have removed is still there."""

    def __init__(self, message: str, report: SourceCleanupReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def render_cleanup_markdown(server: str, report: SourceCleanupReport) -> str:
    head = "executed" if report.executed else "plan only (nothing deleted)"
    lines = [
        f"# Folder cleanup on {server}: {head}",
        "",
        f"- folders: {report.folders_total}; orphans {report.orphans}, duplicates "
        f"{report.duplicates}, phantoms {report.phantoms}",
    ]
    if report.backup_set:
        lines.append(f"- backup before the SQL step: {report.backup_set}")
    if report.executed:
        lines.append(f"- removed: {report.removed}; left: {report.left}")
    lines += ["", "| folder | id | category | reason | outcome |", "|---|---|---|---|---|"]
    lines += [
        f"| {i.name} | `{i.id}` | {i.category} | {i.reason} | {i.outcome} |" for i in report.remove
    ]
    return "\n".join(lines)


@flow(
    name="letta-cleanup-sources",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("cleanup-sources"),
)
def cleanup_sources(
    server: str | None = None,
    store: str | None = None,
    execute: bool = False,
    sql: bool = False,
    lock_timeout_seconds: float = LOCK_WAIT_SECONDS,
) -> SourceCleanupReport:
    """Plan (and with ``execute`` apply) the removal of orphan, duplicate and phantom folders.

    Phantoms can only be removed with ``sql``, after a verified ``pre-cleanup`` backup into
    ``store``. Raises :class:`CleanupFailed` after publishing the report if anything planned
    could not be removed.
    """
    with audited_run("cleanup-sources", server) as audit:
        logger = get_run_logger()
        profile = load_profile(server, need_database=sql)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "cleanup-sources")
        # Refuse a missing store before anything is deleted, not half way through.
        object_store = open_backup_store(store, server) if (sql and execute) else None
        if sql and execute:  # and a role that may delete the rows, before the backup
            require_table_privileges(
                profile.require_database(), "sources", ("SELECT", "UPDATE", "DELETE")
            )

        plan: CleanupPlan = plan_cleanup(survey_folders_task(profile.server))
        phantom_rows: dict[str, dict] = {}
        if sql and plan.of("phantom"):
            rows = inspect_phantom_rows_task(
                profile.require_database(), [i.id for i in plan.of("phantom")]
            )
            phantom_rows = {r.id: r.to_dict() for r in rows}
            _annotate_phantoms(plan, phantom_rows, planned=True)
        elif plan.of("phantom"):
            for item in plan.of("phantom"):
                item.outcome = "needs --sql: the API cannot delete it"

        backup_set: str | None = None
        outcome: dict[str, int] = {}
        if execute:
            with destructive_lock(profile.name, lock_timeout_seconds, database=profile.database):
                # The backup comes first, so it holds the server as it was before the run.
                if sql and _removable_phantoms(plan, phantom_rows):
                    backup_set = take_backup(server, store)
                delete_through_api_task(profile.server, plan.remove)
                doomed = _removable_phantoms(plan, phantom_rows) if sql else []
                if doomed:
                    if backup_set is None:  # phantoms found only when deleting
                        backup_set = take_backup(server, store)
                    audit.update(backup_set=backup_set, store=object_store)
                    rows = delete_phantom_rows_task(profile.require_database(), doomed)
                    phantom_rows.update({r.id: r.to_dict() for r in rows})
                    _annotate_phantoms(plan, phantom_rows, planned=False)
            after = plan_cleanup(survey_folders_task(profile.server))
            removed = [i for i in plan.remove if i.outcome.startswith("deleted")]
            left_ids = {i.id for i in after.remove}
            outcome = {"removed": len(removed), "left": len(after.remove)}
            failed = [i for i in plan.remove if i.id in left_ids and _was_expected(i, sql)]
        else:
            failed = []
        report = SourceCleanupReport.model_validate(
            {
                "server": profile.name,
                "executed": execute,
                "sql": sql,
                "backup_set": backup_set,
                **outcome,
                **plan.to_dict(),
            }
        )
        publish_report(
            profile.name,
            "cleanup-sources",
            render_cleanup_markdown(profile.name, report),
            [{k: str(v) for k, v in i.model_dump().items()} for i in report.remove] or None,
        )
        audit.update(
            executed=execute,
            orphans=report.orphans,
            duplicates=report.duplicates,
            phantoms=report.phantoms,
            removed=report.removed,
        )
        logger.info(
            "%s: %d orphan(s), %d duplicate(s), %d phantom(s)",
            "cleanup" if execute else "plan",
            report.orphans,
            report.duplicates,
            report.phantoms,
        )
        if failed:
            raise CleanupFailed(
                f"{len(failed)} folder(s) could not be removed: "
                + ", ".join(f"{i.name!r} ({i.outcome})" for i in failed[:5]),
                report,
            )
        return report


def take_backup(server: str | None, store: str | None) -> str:
    """A verified backup set before any row is deleted in SQL; its ``SERVER/SET_ID``."""
    taken = backup(server=server, store=store, allow_partial_agents=True, purpose="pre-cleanup")
    if not taken.verified:
        raise CleanupFailed(
            f"The pre-cleanup backup {taken.set} is not verified; nothing was deleted in SQL."
        )
    return taken.set


def _removable_phantoms(plan: CleanupPlan, rows: dict[str, dict]) -> list[str]:
    """Phantom ids the database may lose (rows not inspected yet are re-checked under lock)."""
    return [i.id for i in plan.of("phantom") if rows.get(i.id, {}).get("removable", True)]


def _annotate_phantoms(plan: CleanupPlan, rows: dict[str, dict], planned: bool) -> None:
    for item in plan.of("phantom"):
        row = rows.get(item.id)
        if row is None:
            continue
        if not row["removable"]:
            item.outcome = f"kept: {row['why_not']}"
        elif planned:
            item.outcome = "planned: delete in SQL after a backup"
        else:
            item.outcome = "deleted in SQL"


def _was_expected(item, sql: bool) -> bool:
    """Whether the run should have removed this item (so its presence afterwards is a failure)."""
    if item.category == "phantom":
        return sql and not item.outcome.startswith("kept")
    return not item.outcome.startswith("kept")
