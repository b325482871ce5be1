"""A fleet on a real Prefect work pool: two process workers, deployments from prefect.yaml.

The session's Prefect server (a real one, started by ``prefect_test_harness``) gets a process
work pool and the ``backup`` and ``upgrade`` deployments through ``prefect deploy`` of this
repository's ``prefect.yaml``; two ``prefect worker start`` processes serve the pool. Three real
Letta 0.14.0 servers are saved as blocks tagged ``team:fleet``; one of them is stopped.

- ``fleet-backup`` of ``team:fleet``: one child run per server on the workers (both of them
  run children); the stopped server fails alone, with its cause; the two others get verified
  sets; the fleet run fails (exit 1) naming it;
- ``fleet-upgrade`` to 0.16.2 whose canary's upgrade is made to fail (its target gets 3 s to
  start): the canary's own run rolls it back, no further wave starts, the other two servers are
  untouched, and the report says who is on what.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from letta_ops.blocks.letta_server import LettaServer
from letta_ops.flows.fleet_backup import fleet_backup
from letta_ops.flows.fleet_upgrade import fleet_upgrade, soak
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.runs.child_runs import FleetRunFailed
from letta_ops.tasks.runs.server_selection import ServerEntry
from letta_ops.tasks.sets.catalog import list_backup_sets
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, seed_agents
from tests.fixtures.oracle import http_agents, http_version, sql_table_counts

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
REPO = Path(__file__).resolve().parents[1]
FLEET = ("fleet-a", "fleet-b", "fleet-c")


def _save(name: str, running, tags: list[str]) -> None:
    LettaServer(name=name, base_url=running.server.base_url, tags=tags).save(name, overwrite=True)
    running.database.save(name, overwrite=True)
    running.runtime.save(name, overwrite=True)


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.fixture
def workers(prefect_harness, s3_env, s3_bucket, monkeypatch):
    """A process work pool, the deployments from prefect.yaml and two workers."""
    from prefect.settings import PREFECT_API_URL

    _, bucket, _ = s3_bucket
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "LETTA_OPS_HOME": str(REPO),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
    }
    created = _prefect(env, "work-pool", "create", "letta-ops", "--type", "process")
    assert created.returncode == 0, created.stdout  # one test of the session creates it
    deployed = _prefect(env, "--no-prompt", "deploy", "-n", "backup", "-n", "upgrade")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    procs = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "letta-ops"]
            + ["--name", name, "--limit", "1", "--type", "process"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name in ("worker-1", "worker-2")
    ]
    try:
        yield bucket
    finally:
        for proc in procs:  # only the workers this test started, by their process group
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_fleet_backup_and_rolling_upgrade_on_two_workers(workers, start_letta, s3_bucket):
    with ThreadPoolExecutor(3) as pool:  # three starts at once: ~1 start's wall time
        running = dict(
            zip(FLEET, pool.map(lambda n: start_letta(FROM_VERSION, n), FLEET), strict=True)
        )
    for name, server in running.items():
        with server.client() as client:
            seed_agents(client, 3, prefix=name)
        _save(name, server, ["team:fleet", "env:test"])
    before = {
        n: (http_agents(s.server.base_url), sql_table_counts(s.database))
        for n, s in running.items()
    }
    # An operator's server that is down tonight.
    running["fleet-c"].runtime.stop()

    # --- fleet-backup: children on both workers; one failure stops nobody -------------------
    state = fleet_backup(servers="team:fleet", return_state=True)
    assert state.is_failed()
    with pytest.raises(FleetRunFailed, match="1 of 3 server backups failed: fleet-c: ") as failure:
        state.result()
    # A scheduled backup of a server that is down fails on it, saying so (one way, not two).
    assert "Cannot reach the Letta server" in str(failure.value)
    s3, bucket, _ = s3_bucket
    store = S3ObjectStore(s3, bucket, "backups")
    for name in ("fleet-a", "fleet-b"):
        [backup_set] = list_backup_sets(store, name)
        assert backup_set.complete and backup_set.verified
    assert not [s for s in list_backup_sets(store, "fleet-c") if s.complete]
    records = [
        r for name in FLEET for r in AuditStore.from_env().query(server=name, operation="backup")
    ]
    assert sorted(r.outcome for r in records) == ["failed", "succeeded", "succeeded"]
    assert {(r.details or {}).get("worker") for r in records} == {"worker-1", "worker-2"}
    assert all(r.parent_flow_run_id for r in records)  # children of the fleet run

    # --- the soak's checks on a live server (health at its version, scratch-agent trip) ----
    entry_b = ServerEntry("fleet-b", ("team:fleet",), running["fleet-b"].server.base_url)
    soaked = soak.fn([entry_b], FROM_VERSION, 2, True)
    assert soaked["ok"] and soaked["smoke"]["fleet-b"]["ok"], soaked
    assert soak.fn([entry_b], NEW_VERSION, 2, False)["ok"] is False  # not at that version
    assert http_agents(running["fleet-b"].server.base_url) == before["fleet-b"][0]
    b = running["fleet-b"]  # counts after the smoke check (its agent created, then deleted)
    before["fleet-b"] = (http_agents(b.server.base_url), sql_table_counts(b.database))

    # --- fleet-upgrade whose canary fails: rolled back by its own run, no wave after --------
    planned = fleet_upgrade(NEW_VERSION, servers="team:fleet", wave_size=2, dry_run=True)
    assert planned.waves == [["fleet-a"], ["fleet-b", "fleet-c"]]
    pid_b = running["fleet-b"].runtime.status()["pid"]
    # Fault: the canary's target gets 3 s to become healthy (it needs ~40 s).
    state = fleet_upgrade(
        NEW_VERSION,
        servers="team:fleet",
        upgrade_parameters={"start_timeout_seconds": 3},
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(FleetRunFailed, match="stopped: fleet-a failed") as failure:
        state.result()
    message = str(failure.value)
    assert f"fleet-a on {FROM_VERSION}" in message and f"fleet-b on {FROM_VERSION}" in message
    assert "fleet-c on down" in message  # untouched: still stopped
    a = running["fleet-a"]
    assert http_version(a.server.base_url) == FROM_VERSION
    assert (http_agents(a.server.base_url), sql_table_counts(a.database)) == before["fleet-a"]
    assert running["fleet-b"].runtime.status()["pid"] == pid_b  # never stopped
    assert (
        http_agents(running["fleet-b"].server.base_url),
        sql_table_counts(running["fleet-b"].database),
    ) == before["fleet-b"]
    [upgrade_record] = AuditStore.from_env().query(server="fleet-a", operation="upgrade")
    assert upgrade_record.outcome == "failed" and upgrade_record.rollback_outcome
    assert (upgrade_record.details or {}).get("worker") in {"worker-1", "worker-2"}
    assert not AuditStore.from_env().query(server="fleet-b", operation="upgrade")
