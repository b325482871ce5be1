"""The rollback's report: the plan (the set, what the rollback will lose, the runtime files it puts
back), the outcome, and its Markdown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from ...tasks.runs.phase_timings import PhaseTiming, phases_markdown
from ...tasks.runs.report import FlowReport, ReportPart
from .server_restore import ServerProof, ServerRestore

# --------------------------------------------------------------------------- the report


class RollbackPlan(ReportPart):
    """What the pre-flight found and what the rollback will do; nothing changed yet."""

    server: str
    base_url: str
    runtime: str = Field(description="How the runtime stops and starts the server.")
    pg_tools: str = Field(description="Which PostgreSQL client tools run, and where.")
    set: str = Field(description="SERVER/SET_ID rolled back to.")
    set_created_at: datetime
    set_purpose: str
    from_version: str = Field(description="The version now (a down server's: by revision).")
    server_down: bool = Field(description="The server does not answer: read from its database.")
    to_version: str = Field(description="The set's Letta version.")
    agents_now: int
    agents_in_set: int
    agents_not_in_set: list[str] = Field(
        description="Names of live agents the set lacks: gone after, kept in the safety set."
    )
    agents_coming_back: list[str] = Field(description="Names in the set that are not live.")
    written_since_set: dict[str, int] | None = Field(
        None,
        description="Rows created or changed after the set was taken, per kind (messages, "
        "agents, blocks, passages), by their timestamps: lost by the rollback, kept in the "
        "safety set.",
    )
    agents_created_since_set: list[str] | None = Field(
        None, description="Names of the agents created after the set was taken."
    )
    tables: int
    rows: int
    database_bytes: int
    objects_verified: int = Field(description="Objects whose sha256 was checked.")
    reset_mode: str = Field(description="How the database is emptied.")
    left_alone: list[str] = Field(
        default_factory=list,
        description="What the database holds that is not Letta's and stays as it is (the "
        "operator's tables in Letta's schema one by one, other schemas as a whole).",
    )
    database_role: str
    postgres_major: int | None = Field(description="None: a SQLite server.")
    steps: list[str]
    expected_downtime_seconds: int | float
    runtime_file_changes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Each runtime file the rollback puts back (a compose file, from the "
        "authenticated set) as a unified diff against the file in place now; empty lists: "
        "unchanged.",
    )


class RollbackReport(FlowReport):
    """``rollback()``'s result and ``letta-ops rollback --json``; with ``dry_run`` the plan."""

    model_config = ConfigDict(validate_assignment=True)

    plan: RollbackPlan
    dry_run: bool
    outcome: str = Field(description="planned, succeeded, failed, or failed, undone.")
    approved_by: str | None = Field(None, description="Who approved (None: not asked).")
    safety_set: str | None = Field(None, description="The pre-rollback set: the undo.")
    started_at: datetime | None = None
    error: str | None = Field(None, description="The cause of a failure, with its step.")
    undo: ServerRestore | None = Field(None, description="None: no undo was needed.")
    downtime_seconds: float | None = Field(None, description="Stopped -> verified.")
    sequences: list[dict[str, Any]] | None = Field(
        None,
        description="The sequence repair's changes; their keys vary by action (action, "
        "sequence, table, column, from, to).",
    )
    restore_warnings: list[str] | None = Field(None, description="What pg_restore warned about.")
    verification: ServerProof | None = None
    finished_at: datetime | None = None
    phases: list[PhaseTiming] = Field(
        default_factory=list,
        description="Each phase's start and seconds, in order of start (the safety backup "
        "as one phase; an undo's too).",
    )


def lost_rows(plan: RollbackPlan) -> str:
    """``12 messages, 1 agents, 3 blocks, 0 passages``: what the rollback takes away."""
    return ", ".join(f"{n} {kind}" for kind, n in (plan.written_since_set or {}).items())


def render_rollback_markdown(report: RollbackReport) -> str:
    plan = report.plan
    lines = [
        f"# Rollback {plan.server}: {plan.from_version} -> {plan.to_version} "
        f"from {plan.set}: **{report.outcome}**",
        "",
        f"- set taken {plan.set_created_at.isoformat()} ({plan.set_purpose}); "
        f"{plan.objects_verified} objects verified against their sha256",
        f"- agents: {plan.agents_now} now, {plan.agents_in_set} in the set",
    ]
    if plan.agents_not_in_set:
        lines.append(f"- not in the set (kept in the safety backup): {plan.agents_not_in_set}")
    if plan.written_since_set is not None:
        lines.append(f"- written since the set (lost; in the safety backup): {lost_rows(plan)}")
    if plan.agents_created_since_set:
        lines.append(f"- agents created since the set: {plan.agents_created_since_set}")
    if report.safety_set:
        lines.append(f"- safety backup (undo with --to): {report.safety_set}")
    if report.downtime_seconds is not None:
        lines.append(f"- downtime (stopped -> verified): {report.downtime_seconds} s")
    if report.error:
        lines.append(f"- cause: {report.error}")
    if report.undo:
        undo = report.undo
        lines.append(
            f"- undo: {'restored' if undo.ok else 'FAILED'} {undo.set} "
            f"(version {undo.version}, {undo.seconds} s) {undo.error or ''}"
        )
    lines += phases_markdown(report.phases)
    return "\n".join(lines)
