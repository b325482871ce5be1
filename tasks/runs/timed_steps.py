"""Journaled steps that are also the phases of a report.

Why: a destructive flow already marks each step where it begins (``state.enter(step)``: the
journal that ``recover`` reads, and the step a failure names). Timing those same marks gives
the report's phases without wrapping any step in a ``with`` block or naming it twice.
"""

from __future__ import annotations

from typing import Any

from .journal import JournaledSteps
from .phase_timings import PhaseClock


class TimedSteps(JournaledSteps):
    """``enter(step)`` journals the step and laps ``clock``, which the flow may have lapped
    already for what came before the first step (pre-flight, the lock, the safety backup)."""

    clock: PhaseClock

    def enter(self, step: str, **details: Any) -> None:
        super().enter(step, **details)
        self.clock.lap(step)


__all__ = ["TimedSteps"]
