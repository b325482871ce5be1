"""Phase timings: where a run's time went, in the reports of a backup, verify (drill),
restore, rollback and upgrade.

Why: a backup that takes twice as long as a bare ``pg_dump`` has fixed costs (start-up,
counts, verification, manifest) that no progress bar shows; an operator (and
``bench/backup_ratio.py``) reads them from the report instead of guessing. A flow makes one
:class:`PhaseClock`, wraps each of its existing steps in ``with clock.phase("name"):`` and puts
``clock.timings()`` in its report. A flow whose steps are marked where they begin (the
journaled ``state.enter(step)`` of upgrade) laps the clock instead (:meth:`PhaseClock.lap`,
``letta_ops.tasks.runs.timed_steps``), so no step moves into a ``with`` block. Seconds come from the
monotonic clock (a wall-clock jump does not make a phase negative); the start is wall-clock UTC, to
line up with logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from pydantic import Field

from .report import ReportPart


class PhaseTiming(ReportPart):
    """One phase of a run: when it started and how long it took (failed phases included)."""

    name: str = Field(description="What the run did in this phase (e.g. 'dump+upload').")
    started_at: datetime = Field(description="When the phase started (UTC).")
    seconds: float = Field(description="How long it took, by the monotonic clock.")


def phases_markdown(phases: list[PhaseTiming]) -> list[str]:
    """A Prefect artifact's "Phases" table (no lines when there are no phases)."""
    if not phases:
        return []
    return [
        "",
        "## Phases",
        "",
        "| phase | started (UTC) | seconds |",
        "|---|---|---|",
        *(f"| {p.name} | {p.started_at.isoformat()} | {p.seconds:.1f} |" for p in phases),
    ]


class PhaseClock:
    """Records the phases of one run, in the order they started.

    Thread-safe: a phase may run in a task's worker thread beside the flow's own (a backup's
    exports overlap its dump). No global state: the flow that makes it passes it on.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._monotonic = monotonic
        self._now = now
        self._lock = threading.Lock()
        self._recorded: list[tuple[float, PhaseTiming]] = []
        self._lap: tuple[str, datetime, float] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name``; recorded when it ends, by an exception too."""
        started_at = self._now()
        start = self._monotonic()
        try:
            yield
        finally:
            seconds = max(0.0, self._monotonic() - start)
            timing = PhaseTiming(name=name, started_at=started_at, seconds=round(seconds, 3))
            with self._lock:
                self._recorded.append((start, timing))

    def record(self, name: str, started_at: datetime, start: float, seconds: float) -> None:
        """A phase timed elsewhere (a dump the command started before the run): ``start`` is
        its :func:`time.monotonic` start, which orders it among the others."""
        timing = PhaseTiming(name=name, started_at=started_at, seconds=round(max(0.0, seconds), 3))
        with self._lock:
            self._recorded.append((start, timing))

    def lap(self, name: str) -> None:
        """End the running lap (if any) and start phase ``name`` now: one line where a step
        begins, instead of a ``with`` block around it. Laps never overlap each other."""
        started_at, start = self._now(), self._monotonic()
        with self._lock:
            self._end_lap(start)
            self._lap = (name, started_at, start)

    @contextmanager
    def lapping(self, name: str) -> Iterator[None]:
        """:meth:`lap` as a ``with`` block, for code that times its phases by blocks (a lap
        runs on after the block, until the next lap)."""
        self.lap(name)
        yield

    def stop(self) -> None:
        """End the running lap (if any); a later :meth:`lap` starts a new one."""
        end = self._monotonic()
        with self._lock:
            self._end_lap(end)

    def _end_lap(self, end: float) -> None:
        if self._lap is None:
            return
        name, started_at, start = self._lap
        seconds = round(max(0.0, end - start), 3)
        self._recorded.append(
            (start, PhaseTiming(name=name, started_at=started_at, seconds=seconds))
        )
        self._lap = None

    def timings(self) -> list[PhaseTiming]:
        """The phases ended so far, ordered by when they started."""
        with self._lock:
            recorded = list(self._recorded)
        return [timing for _, timing in sorted(recorded, key=lambda item: item[0])]
