"""One destructive run per server: a Prefect global concurrency limit, on a real Prefect server."""

from __future__ import annotations

import threading
import time

import pytest

from letta_ops.tasks.runs.lock import ServerBusy, destructive_lock


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
from letta_ops.tasks.runs.lock import destructive_lock
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

    from letta_ops.tasks.runs.lock import lock_identity, read_holder, unlock

    proc = _holder_process("lock-killed")
    try:
        holder = read_holder(lock_identity("lock-killed"))
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
        assert read_holder(lock_identity("lock-killed"))["pid"] == os.getpid()
    assert time.monotonic() - started < 30


def test_unlock_frees_a_dead_holder_and_says_why(prefect_harness):
    import os
    import signal

    from letta_ops.tasks.runs.lock import UnlockReport, lock_identity, occupied_slots, unlock

    key = lock_identity("lock-unlock")

    proc = _holder_process("lock-unlock")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert occupied_slots(key) == 1
    planned = unlock("lock-unlock", dry_run=True)
    assert planned.would_free and f"pid {proc.pid}" in planned.reason
    assert not planned.freed and occupied_slots(key) == 1
    freed = unlock("lock-unlock")
    assert freed.freed and f"pid {proc.pid}" in freed.reason
    assert occupied_slots(key) == 0
    assert unlock("lock-unlock") == UnlockReport(
        server="lock-unlock", freed=False, reason="the slot is free"
    )


# ----------------------------------------------------------------- #28: identity, CAS, lost leases


def _database(port: int, name: str = "letta", host: str = "127.0.0.1"):
    from pydantic import SecretStr

    from letta_ops.blocks.letta_database import LettaDatabase

    return LettaDatabase(uri=SecretStr(f"postgresql://letta:pw@{host}:{port}/{name}"))


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _orphaned_slot(identity: str, lease_id: str | None) -> dict:
    """The state a ``kill -9`` leaves on a temporary Prefect server: the slot counted in the
    Prefect database, the record naming a dead pid, the lease (if any) unknown to the server."""
    import socket
    import uuid

    from prefect.client.orchestration import get_client

    from letta_ops.tasks.runs.lock import (
        _create_variable,
        holder_variable,
        lock_name,
        occupied_slots,
    )

    assert occupied_slots(identity) == 0
    with get_client(sync_client=True) as client:  # counted, with no lease behind it
        client.increment_concurrency_slots([lock_name(identity)], 1, mode="concurrency")
    record = {
        "token": uuid.uuid4().hex,
        "server": "x",
        "host": socket.gethostname(),
        "pid": _dead_pid(),
        "since": "2026-01-01T00:00:00+00:00",
        "flow_run_id": None,
        "lease_id": lease_id,
    }
    assert _create_variable(holder_variable(identity), record)
    assert occupied_slots(identity) == 1
    return record


def test_two_server_names_for_one_database_share_one_lock(prefect_harness):
    from letta_ops.tasks.runs.lock import lock_identity

    one, same, other = _database(5999), _database(5999, host="127.0.0.1"), _database(5998)
    assert lock_identity("a", one) == lock_identity("b", same) != lock_identity("a", other)
    with destructive_lock("name-a", 0, database=one):
        with pytest.raises(ServerBusy, match="name-b"):
            with destructive_lock("name-b", 0, database=same):
                pass
        with destructive_lock("name-a", 0, database=other):  # another database: free
            pass
    with destructive_lock("name-b", 0, database=same):
        pass


def test_a_lease_lost_with_a_temporary_prefect_server_is_given_back_exactly_once(
    prefect_harness,
):
    """The issue's state: recover found a dead holder whose lease the Prefect API never
    heard of. Releasing by lease id is a silent no-op there; one slot must be given back,
    no more (the count while held is 1, after 0), with no --force."""
    import uuid

    from letta_ops.tasks.runs.lock import lock_identity, occupied_slots, read_holder

    key = lock_identity("lock-lost", _database(5990))
    dead = _orphaned_slot(key, str(uuid.uuid4()))
    with destructive_lock("lock-lost", 0, database=_database(5990)):
        assert occupied_slots(key) == 1
        holder = read_holder(key)
        assert holder["token"] != dead["token"] and holder["lease_id"]
    assert occupied_slots(key) == 0 and read_holder(key) is None


def test_a_dead_holder_is_replaced_only_by_the_winner_of_its_ticket(prefect_harness):
    """Compare-and-swap: when another caller (alive) already won the dead holder's ticket,
    this one touches neither the record nor the count."""
    import os
    import socket
    import uuid

    from letta_ops.tasks.runs.lock import (
        _create_variable,
        _delete_variable,
        lock_identity,
        occupied_slots,
        read_holder,
        ticket_variable,
    )

    db = _database(5991)
    key = lock_identity("lock-cas", db)
    dead = _orphaned_slot(key, str(uuid.uuid4()))
    winner = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
    assert _create_variable(ticket_variable(dead), winner)
    with pytest.raises(ServerBusy):
        with destructive_lock("lock-cas", 0, database=db):
            pass
    assert occupied_slots(key) == 1 and read_holder(key) == dead  # untouched
    # The winner dies before it replaced the record: its own death is proven in turn.
    _delete_variable(ticket_variable(dead))
    assert _create_variable(ticket_variable(dead), {**winner, "pid": _dead_pid()})
    with destructive_lock("lock-cas", 0, database=db):
        assert occupied_slots(key) == 1
    assert occupied_slots(key) == 0


def test_two_callers_reclaiming_one_dead_holder_free_one_slot(prefect_harness):
    import uuid

    from letta_ops.tasks.runs.lock import lock_identity, occupied_slots

    key = lock_identity("lock-two-reclaimers")
    _orphaned_slot(key, str(uuid.uuid4()))
    assert _contend("lock-two-reclaimers", timeout=0, hold=5) == ["held", "refused"]
    assert occupied_slots(key) == 0


CLAIM_AND_SLEEP = """
import sys, time
from letta_ops.tasks.runs.lock import _claim, lock_identity
_claim(sys.argv[1], lock_identity(sys.argv[1]), 0, ())
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_run_killed_after_its_claim_before_the_slot_is_taken_over(prefect_harness):
    """The record comes before the slot: a run killed in between leaves a record naming a
    dead pid and no counted slot, which the next run replaces (nothing given back)."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from letta_ops.tasks.runs.lock import lock_identity, occupied_slots, read_holder

    key = lock_identity("lock-claimed")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_SLEEP, "lock-claimed"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "claimed"
        assert read_holder(key)["pid"] == proc.pid and occupied_slots(key) == 0
        with pytest.raises(ServerBusy, match="taking the slot"):  # alive: refused
            with destructive_lock("lock-claimed", 0):
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with destructive_lock("lock-claimed", 0):
        assert occupied_slots(key) == 1 and read_holder(key)["pid"] == os.getpid()
    assert occupied_slots(key) == 0


def test_a_journal_proves_a_holder_dead_whatever_prefect_says(prefect_harness):
    """recover's proof: the journal names the run; its record (whose pid may be reused or on
    another host, whose Prefect run another API never saw) is replaced on that proof."""
    import uuid

    from letta_ops.tasks.runs.lock import (
        DeadRun,
        _create_variable,
        holder_variable,
        lock_identity,
        occupied_slots,
        unlock,
    )

    key = lock_identity("lock-journal")
    run_id = str(uuid.uuid4())
    other_host = {
        "token": uuid.uuid4().hex,
        "host": "worker-lost",
        "pid": 4242,
        "flow_run_id": run_id,
        "since": "2026-01-01T00:00:00+00:00",
    }
    assert occupied_slots(key) == 0
    assert _create_variable(holder_variable(key), other_host)
    with pytest.raises(ServerBusy, match="may still run"):
        unlock("lock-journal", proven_dead=[])
    proof = DeadRun(run_id, "worker-lost", 4242, "its process is gone")
    planned = unlock("lock-journal", dry_run=True, proven_dead=[proof])
    assert planned.would_free and f"journal of run {run_id}" in planned.reason
    with destructive_lock("lock-journal", 0, proven_dead=[proof]):
        assert occupied_slots(key) == 1
    assert occupied_slots(key) == 0
