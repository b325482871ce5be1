"""What putting a server back on a set reports: its start, its proof against the set, and the
whole restore (an upgrade's undo, a rollback, a recovery)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ...tasks.runs.report import ReportPart
from ..verify import CountDifference


class ServerStart(ReportPart):
    """A Letta server started on a restored database (:func:`start_set_version`)."""

    pid: int | None = Field(description="Its process id (None: a runtime that does not say).")
    version: str
    base_url: str
    auth: str | None = Field(
        description="'password required', 'OPEN', or None when the runtime does not say."
    )


class ServerProof(ReportPart):
    """The running server against a set's manifest (:func:`prove_server_matches_set`)."""

    ok: bool = Field(description="Version, agents and every table's count equal the set's.")
    version: str = Field(description="The version the server reports.")
    agents: int = Field(description="Agents the server lists.")
    agents_equal: bool = Field(description="The same agents (id -> name) as the set.")
    agents_missing: list[str] = Field(description="Ids in the set the server lacks.")
    agents_unexpected: list[str] = Field(description="Ids the server has, the set not.")
    count_differences: list[CountDifference]


class ServerRestore(ReportPart):
    """A whole server put back on a set (:func:`restore_server_from_set`): an upgrade's
    rollback, a rollback's undo, a recovery. Never raised: ``ok`` and ``error`` say."""

    ok: bool
    set: str = Field(description="SERVER/SET_ID restored.")
    seconds: float = Field(description="How long it took, stop to proof.")
    version: str | None = Field(None, description="The version running after (None: failed).")
    agents: int | None = None
    agents_equal: bool | None = Field(None, description="The set's agents, by id and name.")
    count_differences: list[CountDifference] | None = None
    sequences: list[dict[str, Any]] | None = Field(
        None,
        description="The sequence repair's changes; their keys vary by action (action, "
        "sequence, table, column, from, to).",
    )
    error: str | None = Field(None, description="Why it failed (None: it did not).")
