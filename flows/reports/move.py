"""The move-to-postgres report: the plan (tables, rows, bytes, expected time), the per-table
counts of both sides, the per-agent messages and blocks, and its Markdown.
"""

from __future__ import annotations

from pydantic import Field

from ...tasks.runs.phase_timings import PhaseTiming, phases_markdown
from ...tasks.runs.report import FlowReport, ReportPart


class MoveTable(ReportPart):
    """One SQLite table: what the move did with it and the counts both sides gave."""

    name: str
    action: str = Field(description="'copy', or 'skip' with the reason.")
    reason: str = ""
    rows: int = Field(description="Rows in the SQLite table when planned.")
    bytes: int = Field(description="Bytes its pages take in the SQLite file.")
    sqlite_count: int | None = Field(None, description="count(*) in SQLite after the copy.")
    postgres_count: int | None = Field(None, description="count(*) in PostgreSQL after it.")
    seconds: float | None = Field(None, description="How long its COPY took.")


class MoveAgent(ReportPart):
    """One agent's messages and blocks, counted on both sides."""

    agent_id: str
    sqlite_messages: int
    postgres_messages: int
    sqlite_blocks: int
    postgres_blocks: int


class MoveReport(FlowReport):
    """``move_to_postgres()``'s result and ``letta-ops move-to-postgres --json``."""

    server: str
    version: str = Field(description="The Letta version, the same on both sides.")
    sqlite_file: str
    target: str = Field(description="The PostgreSQL database, password hidden.")
    dry_run: bool = Field(description="True: only planned, nothing stopped or written.")
    tables: list[MoveTable]
    rows: int = Field(description="Rows to copy (the copied tables').")
    bytes: int = Field(description="Bytes of the copied tables in the SQLite file.")
    expected_seconds: float = Field(description="Expected run time, from the bench's rate.")
    copy_order: list[str] = Field(default_factory=list, description="Tables, parents first.")
    deferred_keys: list[str] = Field(
        default_factory=list,
        description="Foreign keys (in cycles) dropped for the copy and added back, checked.",
    )
    agents: list[MoveAgent] = Field(default_factory=list)
    sequences_moved: int = Field(0, description="Sequences set past their column's maximum.")
    sqlite_sha256_before: str | None = None
    sqlite_sha256_after: str | None = Field(
        None, description="Equal to before: the SQLite file was left as it was."
    )
    now_on: str = Field(description="'postgresql' after a move, 'sqlite' after a dry run.")
    phases: list[PhaseTiming] = Field(default_factory=list)


def render_move_markdown(report: MoveReport) -> str:
    head = "Move plan" if report.dry_run else "Move"
    lines = [
        f"# {head}: {report.server} from SQLite to PostgreSQL (Letta {report.version})",
        "",
        f"- SQLite file: `{report.sqlite_file}`",
        f"- target: `{report.target}`",
        f"- rows {report.rows}, bytes {report.bytes}, expected {report.expected_seconds:.0f} s",
        f"- now on: {report.now_on}",
        "",
        "| table | action | rows | bytes | SQLite count | PostgreSQL count |",
        "|---|---|---|---|---|---|",
        *(
            f"| {t.name} | {t.action}{f' ({t.reason})' if t.reason else ''} | {t.rows} | "
            f"{t.bytes} | {'' if t.sqlite_count is None else t.sqlite_count} | "
            f"{'' if t.postgres_count is None else t.postgres_count} |"
            for t in report.tables
        ),
    ]
    if report.agents:
        lines += [
            "",
            "| agent | messages (SQLite / PostgreSQL) | blocks (SQLite / PostgreSQL) |",
            "|---|---|---|",
            *(
                f"| {a.agent_id} | {a.sqlite_messages} / {a.postgres_messages} | "
                f"{a.sqlite_blocks} / {a.postgres_blocks} |"
                for a in report.agents
            ),
        ]
    return "\n".join(lines + phases_markdown(report.phases))
