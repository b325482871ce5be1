"""One destructive run per server: a Prefect global concurrency limit, on a real Prefect server."""

from __future__ import annotations

import threading
import time

import pytest

from letta_ops.flows.server_lock import ServerBusy, destructive_lock


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


HOLD_AND_SLEEP = """
import sys, time
from letta_ops.flows.server_lock import destructive_lock
with destructive_lock(sys.argv[1], 0):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder_process(server: str):
    """A separate process that takes the server's slot and sleeps (killed by the test)."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_SLEEP, server],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_is_named_then_reclaimed_at_once(prefect_harness):
    import os
    import signal

    from letta_ops.flows.server_lock import read_holder, unlock

    proc = _holder_process("lock-killed")
    try:
        holder = read_holder("lock-killed")
        assert holder["pid"] == proc.pid and holder["lease_id"]
        # Alive: refused, naming the holder and its lease; unlock will not free it.
        with pytest.raises(ServerBusy, match=rf"pid {proc.pid}\).*lease runs to"):
            with destructive_lock("lock-killed", 0):
                pass
        with pytest.raises(ServerBusy, match="may still run"):
            unlock("lock-killed")
        # --dry-run only says so, without refusing (exit 0) and without freeing anything.
        planned = unlock("lock-killed", dry_run=True)
        assert planned.would_free is False and "may still run" in planned.reason
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Dead (kill -9: no release, the lease would hold the slot for 300 s): taken at once.
    started = time.monotonic()
    with destructive_lock("lock-killed", 0):
        assert read_holder("lock-killed")["pid"] == os.getpid()
    assert time.monotonic() - started < 30


def test_unlock_frees_a_dead_holder_and_says_why(prefect_harness):
    import os
    import signal

    from letta_ops.flows.server_lock import UnlockReport, occupied_slots, unlock

    proc = _holder_process("lock-unlock")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert occupied_slots("lock-unlock") == 1
    planned = unlock("lock-unlock", dry_run=True)
    assert planned.would_free and f"pid {proc.pid}" in planned.reason
    assert not planned.freed and occupied_slots("lock-unlock") == 1
    freed = unlock("lock-unlock")
    assert freed.freed and f"pid {proc.pid}" in freed.reason
    assert occupied_slots("lock-unlock") == 0
    assert unlock("lock-unlock") == UnlockReport(
        server="lock-unlock", freed=False, reason="the slot is free"
    )
