"""One destructive run per server: a Prefect global concurrency limit, on a real Prefect server."""

from __future__ import annotations

import threading
import time

import pytest

from flows.server_lock import ServerBusy, destructive_lock


def _contend(server: str, timeout: float, hold: float, runs: int = 2) -> list[str]:
    """Start ``runs`` holders of the server's lock at the same moment; what each got."""
    outcomes: list[str] = []
    barrier = threading.Barrier(runs)

    def run() -> None:
        barrier.wait()
        try:
            with destructive_lock(server, timeout):
                outcomes.append("held")
                time.sleep(hold)
        except ServerBusy:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def test_two_runs_started_together_never_both_hold(prefect_harness):
    # Held for longer than the acquire grace: the loser is refused, not served after.
    assert _contend("lock-race", timeout=0, hold=35) == ["held", "refused"]


def test_a_waiting_run_gets_the_slot_after_the_holder(prefect_harness):
    assert _contend("lock-wait", timeout=60, hold=2) == ["held", "held"]


def test_a_held_slot_is_refused_at_once(prefect_harness):
    with destructive_lock("lock-held", 0):
        started = time.monotonic()
        with pytest.raises(ServerBusy, match="lock-held"):
            with destructive_lock("lock-held", 0):
                pass
        assert time.monotonic() - started < 10
    with destructive_lock("lock-held", 0):  # released: free again
        pass
