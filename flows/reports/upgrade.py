"""The upgrade's report: the plan, each step's time, what was verified, what a rebuild does not
carry, and its Markdown; apart from the flow so the rehearsal reads the same models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from ...tasks.runs.phase_timings import PhaseTiming, phases_markdown
from ...tasks.runs.report import FlowReport, ReportPart, StoredPart
from .downtime_window import DowntimeWindow
from .move import MoveReport
from .server_restore import ServerRestore

Strategy = Literal["migrate", "rebuild"]


class Rename(ReportPart):
    old: str = Field(description="The agent's name now.")
    new: str = Field(description="The name the target version accepts.")


class TimedStep(StoredPart):
    step: str
    seconds: float


class RehearsalRecord(StoredPart):
    """The newest successful rehearsal of these versions and strategy (audit history)."""

    run: str = Field(description="The rehearsal's audit record id.")
    at: datetime = Field(description="When it ended.")
    age_hours: float
    downtime_seconds: int | float = Field(description="The downtime it measured.")
    downtime_steps: list[TimedStep]
    source_set: str | None = Field(description="The set the copy was restored from.")


class UpgradePlan(ReportPart):
    """What the pre-flight found and what the upgrade will do; nothing changed yet."""

    server: str
    base_url: str
    from_version: str
    to_version: str
    strategy: str = Field(description="migrate (lossless) or rebuild (agent files).")
    runtime: str = Field(description="How the runtime stops and starts the server.")
    pg_tools: str = Field(description="Which PostgreSQL client tools run, and where.")
    alembic_revision: str | None
    reset_mode: str = Field(description="How the database is emptied before a restore.")
    left_alone: list[str] = Field(
        default_factory=list,
        description="What the database holds that is not Letta's and stays as it is (the "
        "operator's tables in Letta's schema one by one, other schemas as a whole).",
    )
    database_role: str
    postgres_major: int
    agents: int
    database_bytes: int
    free_bytes: int = Field(description="Free bytes in the temporary directory.")
    name_rule: str = Field(description="The agent-name rule the renames follow.")
    renames: dict[str, Rename] = Field(description="Agent id -> the rename the rule needs.")
    transit_renames: dict[str, Rename] = Field(
        default_factory=dict,
        description="Rebuild only: agent id -> the name its file carries to pass the source's "
        "export too (agents not in 'renames' get their own name back after the import).",
    )
    steps: list[str]
    rehearsal: RehearsalRecord | None = Field(description="None: never rehearsed.")
    expected_downtime_seconds: int | float
    expected_downtime_source: str = Field(description="Measured by a rehearsal, or a guess.")
    lossy: bool = Field(description="Agent files only (rebuild): not everything carries.")
    rehearsal_current: bool | None = Field(
        None,
        description="A rehearsal not older than the newest backup exists (None: not asked, "
        "as in a rehearsal's own plan).",
    )

    def rename_map(self) -> dict[str, dict[str, str]]:
        """The renames as the steps take them: ``{agent_id: {"old": ..., "new": ...}}``
        (a rebuild's transit names: what the exported files carry)."""
        renames = self.transit_renames if self.strategy == "rebuild" else self.renames
        return {agent_id: change.model_dump() for agent_id, change in renames.items()}

    def final_map(self) -> dict[str, dict[str, str]]:
        """The names the agents end up with, as the steps take them."""
        return {agent_id: change.model_dump() for agent_id, change in self.renames.items()}


class SequenceRepair(ReportPart):
    """What the sequence repair after the migration changed and checked."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    schema_: str = Field(alias="schema", description="The schema repaired.")
    dry_run: bool
    changes: list[dict[str, Any]] = Field(
        description="Changes made; their keys vary by action (action, sequence, table, "
        "column, from, to)."
    )
    checked: list[dict[str, Any]] = Field(
        description="Every column checked (table, column, sequence, source, max, next_value, ok)."
    )


class AgentVerification(ReportPart):
    """One agent before and after the upgrade."""

    agent: str = Field(description="The agent's id before.")
    name_before: str
    name_after: str
    messages_before: int
    messages_after: int | None = Field(description="None: the agent is missing after.")
    blocks_before: int
    blocks_after: int | None = Field(description="None: the agent is missing after.")


class NotCarried(ReportPart):
    """What a rebuild's agent files did not carry (the pre-upgrade dump still holds it)."""

    messages: int
    archival_passages: int
    note: str


class UpgradeReport(FlowReport):
    """``upgrade()``'s result and ``letta-ops upgrade --json``; with ``dry_run`` the plan."""

    model_config = ConfigDict(validate_assignment=True)

    plan: UpgradePlan
    dry_run: bool
    outcome: str = Field(
        description="planned, succeeded, failed, or failed, rolled back (in the audit)."
    )
    approved_by: str | None = Field(None, description="Who approved (None: not asked).")
    backup_set: str | None = Field(None, description="The pre-upgrade set (None: planned).")
    started_at: datetime | None = None
    error: str | None = Field(None, description="The cause of a failure, with its step.")
    rollback: ServerRestore | None = Field(None, description="None: no rollback was needed.")
    downtime_seconds: float | None = Field(None, description="Stopped -> verified.")
    downtime_window: DowntimeWindow | None = Field(None, description="When clients were refused.")
    sequences: SequenceRepair | None = None
    agents_after: int | None = None
    verification: list[AgentVerification] | None = Field(None, description="Per agent.")
    not_carried: NotCarried | None = Field(None, description="Rebuild only.")
    finished_at: datetime | None = None
    phases: list[PhaseTiming] = Field(
        default_factory=list, description="Where the run's time went (start and seconds)."
    )
    move: MoveReport | None = Field(
        None,
        description="A SQLite server's move to PostgreSQL, the upgrade's first part: planned, "
        "then copied (None: the server was on PostgreSQL already).",
    )
    profile_change: list[str] | None = Field(
        None,
        description="After a SQLite server's upgrade: what the operator must change in the "
        "server's profile (letta-ops cannot change their environment); never a password.",
    )


# --------------------------------------------------------------------------- the audit


def audit_renames(renames: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    return [{"agent": a, "from": c["old"], "to": c["new"]} for a, c in sorted(renames.items())]


def rollback_outcome(rollback: dict[str, Any] | None) -> str:
    """One line for the audit: not needed, succeeded (and to which version), or failed why."""
    if rollback is None:
        return "not needed"
    if rollback.get("ok"):
        return f"succeeded: Letta {rollback.get('version')} restored"
    return f"failed: {str(rollback.get('error') or 'counts differ')[:180]}"


# --------------------------------------------------------------------------- the flow


def render_upgrade_markdown(report: UpgradeReport) -> str:
    plan = report.plan
    lines = [
        f"# Upgrade {plan.server}: {plan.from_version} -> {plan.to_version} "
        f"({plan.strategy}): **{report.outcome}**",
        "",
        f"- runtime: {plan.runtime}",
    ]
    if report.error:
        lines += [f"- cause: {report.error}"]
    if report.rollback:
        rb = report.rollback
        lines += [
            f"- rollback: {'succeeded' if rb.ok else 'FAILED'} "
            f"(version {rb.version}, {rb.seconds} s) {rb.error or ''}"
        ]
    if report.downtime_seconds is not None:
        lines += [f"- downtime (stopped -> verified): {report.downtime_seconds} s"]
    if report.backup_set:
        lines += [f"- pre-upgrade backup set: {report.backup_set}"]
    if report.move:
        mv = report.move
        lines += [
            f"- moved from SQLite first ({mv.sqlite_file}, Letta {mv.version}): {mv.rows} rows "
            f"of {len([t for t in mv.tables if t.action == 'copy'])} tables into {mv.target}"
            + (" (planned)" if mv.dry_run else "")
        ]
    lines += [f"- profile: {change}" for change in report.profile_change or []]
    for agent_id, change in plan.renames.items():
        lines += [f"- renamed `{agent_id}`: {change.old!r} -> {change.new!r}"]
    if report.not_carried:
        nc = report.not_carried
        lines += [
            f"- not carried by agent files: {nc.messages} messages, "
            f"{nc.archival_passages} archival passages ({nc.note})"
        ]
    return "\n".join(lines + phases_markdown(report.phases))
