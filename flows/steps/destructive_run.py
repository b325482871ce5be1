"""The prologue every destructive run shares: the plan confirmed, the server's lock, the
operator's approval.

Why one function: upgrade, rollback, restore and recover each took the lock, asked for
approval and recorded a refusal in their own words (about twenty lines each); a fix to one
(an approval declined after the lock, a refusal the audit missed) had to be made four times.
What follows the prologue differs by run (a pinned safety set, then the journal, then the
steps inside :func:`letta_ops.flows.steps.server_steps.undoable`) and stays in each flow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from ...tasks.errors import Refused
from ...tasks.postgres.database import PostgresDatabase
from ...tasks.runs.approval import ApprovalDeclined, await_operator_approval
from ...tasks.runs.confirmation import confirm_plan
from ...tasks.runs.lock import DeadRun, destructive_lock

Phase = Callable[[str], AbstractContextManager[Any]]


@contextmanager
def destructive_section(
    operation: str,
    server: str,
    record: Any,
    *,
    report: Any = None,
    approval: bool = False,
    lock_timeout_seconds: float | None = 0,
    database: PostgresDatabase | None = None,
    proven_dead: Iterable[DeadRun] = (),
    phase: Phase | None = None,
) -> Iterator[None]:
    """Confirm ``report``'s plan (when a terminal asks), hold ``server``'s destructive lock,
    then wait for an operator's approval (``approval``); the block runs with the lock held.

    ``record`` is the run's audit record: a declined confirmation or approval is recorded as
    ``refused`` before it propagates; ``phase`` times the lock and the approval in the
    report's phases.
    """
    timed: Phase = phase or (lambda _name: nullcontext())
    if report is not None:
        try:
            confirm_plan(report)  # the plan shown is the plan executed
        except Refused:
            record.update(outcome="refused")
            raise
    with contextlib.ExitStack() as held:
        with timed("lock"):
            held.enter_context(
                destructive_lock(
                    server, lock_timeout_seconds, database=database, proven_dead=proven_dead
                )
            )
        if approval:
            try:
                with timed("approval"):
                    approved_by = await_operator_approval(operation, server)
            except ApprovalDeclined:
                record.update(outcome="refused")
                raise
            record.update(approved_by=approved_by)
            if report is not None:
                report.approved_by = approved_by
        yield
