"""What ``restore`` reports: its plan (all the pre-flight found, nothing changed yet), the
environment later commands find a restored server with, and the result with its Markdown.

Why apart from flows/restore.py: the PostgreSQL restore (there) and the SQLite one
(flows/steps/sqlite_restore_target.py) fill the same report, so neither owns it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from ...tasks.runs.phase_timings import PhaseTiming, phases_markdown
from ...tasks.runs.report import FlowReport, ReportPart
from ..verify import CountDifference
from .server_restore import ServerProof, ServerStart


class RestorePlan(ReportPart):
    """What the pre-flight found and what the restore will do; nothing changed yet."""

    set: str = Field(description="SERVER/SET_ID restored.")
    set_created_at: datetime
    letta_version: str = Field(description="The set's Letta version.")
    target: str = Field(
        description="The target database's URI, password redacted, or the SQLite file."
    )
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
    server_name: str | None = Field(
        description="The restored server's name, or a SQLite target's name for its history "
        "and `recover` (None: a PostgreSQL restore without a start)."
    )
    engine: str = Field("postgresql", description="postgresql, or sqlite (the set's engine).")


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
