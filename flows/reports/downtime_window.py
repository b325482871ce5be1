"""When an upgrade's server stopped serving and when it served again, in wall-clock UTC.

Why: the upgrade report's ``downtime_seconds`` says how long clients were refused, not when.
letta-ops never sees the requests a client sent while the server was down (they never reach
a server), so it cannot count them; what it can give is the window, so an operator (or a
client's own error log) can line refused writes up with the run: every write refused by the
upgrade falls inside ``[stopping_at, serving_at]`` (``tests/test_load_during_runs_e2e.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field

from ...tasks.runs.report import ReportPart


class DowntimeWindow(ReportPart):
    """From the moment the stop began to the new version's first healthy answer."""

    stopping_at: datetime = Field(description="The old server's stop began (UTC).")
    serving_at: datetime = Field(
        description="The new version answered its health check (UTC); a rebuild's agents are "
        "imported after this."
    )


class DowntimeWatch:
    """Made as the stop begins; ``serving()`` once the new version answers."""

    def __init__(self) -> None:
        self.stopping_at = datetime.now(UTC)
        self.serving_at: datetime | None = None

    def serving(self) -> None:
        self.serving_at = datetime.now(UTC)

    def window(self) -> DowntimeWindow | None:
        """The window (None: the server never served again in this run)."""
        if self.serving_at is None:
            return None
        return DowntimeWindow(stopping_at=self.stopping_at, serving_at=self.serving_at)
