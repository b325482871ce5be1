"""The operator's yes between a destructive run's plan and its first step, asked in the run.

Why inside the run: the command line used to run a flow twice, a dry run to show the plan and
then the run, so the plan confirmed was computed apart from the plan executed (a version
installed, a set chosen, a row count taken twice) and two runs landed in the audit history.
Now the flow computes its plan once and hands it to whoever waits at a terminal in this
process (:func:`asking`); a deployment's run has no one asking and goes on (its gate is
``approval``, in the Prefect UI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_ask: ContextVar[Callable[[Any], None] | None] = ContextVar("letta_ops_confirm", default=None)


@contextmanager
def asking(ask: Callable[[Any], None]) -> Iterator[None]:
    """Runs started inside this block show their plan to ``ask`` before the first destructive
    step; ``ask`` raises (a :class:`letta_ops.tasks.errors.Refused`) to cancel."""
    token = _ask.set(ask)
    try:
        yield
    finally:
        _ask.reset(token)


def confirm_plan(report: Any) -> None:
    """Show ``report`` (the run's plan) to whoever is asking; nothing when no one is."""
    ask = _ask.get()
    if ask is not None:
        ask(report)
