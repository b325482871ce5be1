"""``FlowReport``: what every letta-ops flow returns, and what its command prints with ``--json``.

Why typed reports rather than dicts: a script that reads ``letta-ops upgrade --json`` reads the
same shape the next flow reads from ``upgrade()``; a key renamed in one place and not the other
fails when the report is built (``extra="forbid"``), not in an operator's cron job a week later.
The ``--json`` document of a command is its report's ``model_dump(mode="json")``: ISO-8601
times, ``schema_version`` first (:mod:`letta_ops.tasks.runs.report_schema`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .report_schema import SCHEMA_VERSION


class ReportPart(BaseModel):
    """A part of a report (a row, a plan, a check): closed like the report itself, so a key a
    task adds or renames fails where the report is built, not in a script reading it."""

    model_config = ConfigDict(extra="forbid")


class StoredPart(BaseModel):
    """A part of a report read back from what an earlier run stored (a lock holder, a
    rehearsal in the audit history): keys a later or earlier letta-ops wrote are ignored,
    never a reason to fail the run that reads them."""

    model_config = ConfigDict(extra="ignore")


class FlowReport(BaseModel):
    """The base of every flow's report: versioned, closed (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(
        default=SCHEMA_VERSION,
        description="Version of this report's JSON shape; raised when a key changes meaning.",
    )
