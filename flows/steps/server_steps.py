"""Stopping and starting a Letta server inside a destructive run: one Prefect task each.

Why one definition: an upgrade, a rollback and a rehearsal stop and start a server the same way,
and two tasks of one name made the Prefect UI ambiguous. Stopping is every destructive run's
first destructive step, so its undo is the transaction's: whatever the flow put under ``"undo"``
(restore the safety set and start the old version) runs when any later step fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, transaction

from ...blocks.server_profile import ServerProfile
from ...tasks.runs import timeouts as run_timeouts
from .restore_server import start_set_version


@task(
    name="stop-letta-server", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.SERVER_STOP_START
)
def stop_server_step(profile: ServerProfile) -> None:
    profile.runtime.stop(log=get_run_logger().info)


@stop_server_step.on_rollback
def _undo_after_stop(txn: Transaction) -> None:
    """The first destructive step's undo: what the run registered with :func:`undoable`."""
    undo: Callable[[], None] | None = txn.get("undo", None)
    if undo is not None:
        undo()


@task(
    name="start-letta-server", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.SERVER_STOP_START
)
def start_server_step(profile: ServerProfile, version: str, timeout: float) -> dict[str, Any]:
    database = profile.sqlite or profile.require_database()
    return start_set_version(profile.runtime, database, version, timeout, log=get_run_logger().info)


@contextmanager
def undoable(state: Any, undo: Callable[[], None]) -> Iterator[Transaction]:
    """A destructive run's steps, in one Prefect transaction: when a step after the stop fails,
    ``undo`` runs (put the server back) before the failure reaches the flow.

    ``state`` is the run's journaled state, kept in the transaction for the steps' own hooks
    (an upgrade's renames are taken back by name).
    """
    with transaction() as txn:
        txn.set("state", state)
        txn.set("undo", undo)
        yield txn
