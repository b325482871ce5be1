"""A hung ``pg_dump`` ends at the run's timeout, in one sentence, and frees what the run held.

Why: before timeouts, a ``pg_dump`` that never returned kept its run alive for ever, and the
run kept renewing the leases it held (the server's destructive lock during an upgrade's safety
backup, a fleet's per-store slot), so every later run was refused as busy. The hang is real: the
configured client directory (``LETTA_OPS_PG_BIN``) holds a ``pg_dump`` that stops itself
(SIGSTOP) beside the real tools. The database is a real Letta 0.16.2 schema on PostgreSQL 18;
the Letta server is down, which a safety backup accepts (the dump is the whole backup).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from letta_ops.tasks.postgres.database import default_pg_bin_dir
from tests.fixtures.letta import NEW_VERSION

pytestmark = pytest.mark.e2e


def hung_pg_bin(directory: Path) -> tuple[Path, Path]:
    """A client directory whose pg_dump stops itself once it is asked to dump; the file its
    pid is written to."""
    real = default_pg_bin_dir()
    directory.mkdir()
    for tool in real.iterdir():
        if tool.name != "pg_dump":
            (directory / tool.name).symlink_to(tool)
    pid_file = directory / "pg_dump.pid"
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) exec "{real}/pg_dump" "$@";; esac\n'
        f'echo $$ > "{pid_file}"\n'
        "kill -STOP $$\n"
    )
    script.chmod(0o755)
    return directory, pid_file


@pytest.fixture
def hung_server(tmp_path, letta_template, s3_env, s3_bucket, monkeypatch):
    """The environment of a server whose pg_dump hangs; yields (server name, pid file, bucket)."""
    pg_bin, pid_file = hung_pg_bin(tmp_path / "pg-bin")
    database = letta_template(NEW_VERSION, "hung_dump")
    _, bucket, _ = s3_bucket
    name = f"hung-{uuid.uuid4().hex[:6]}"
    for key, value in {
        "LETTA_BASE_URL": "http://127.0.0.1:9",  # the server is down
        "LETTA_PG_URI": database.letta_pg_uri(),
        "LETTA_OPS_SERVER_NAME": name,
        "LETTA_OPS_PG_BIN": str(pg_bin),
        "LETTA_OPS_STORE": f"s3://{bucket}/hung",
    }.items():
        monkeypatch.setenv(key, value)
    yield name, pid_file, bucket
    if pid_file.exists():  # never leave the stopped pg_dump behind, whatever the test did
        try:
            psutil.Process(int(pid_file.read_text())).kill()
        except psutil.NoSuchProcess:
            pass


def _gone(pid_file: Path) -> bool:
    pid = int(pid_file.read_text())
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hung_dump_times_out_and_frees_the_lock_and_the_slot(prefect_harness, hung_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from letta_ops.flows.backup import backup
    from letta_ops.tasks.runs.lock import destructive_lock, occupied_slots

    name, pid_file, bucket = hung_server
    store_slot = f"letta-ops-test-store-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=store_slot, limit=1, active=True)
        )

    @flow(name="test-locked-safety-backup")
    def locked_safety_backup() -> None:
        """As an upgrade does: the destructive lock, then a safety backup as a subflow."""
        with destructive_lock(name):
            backup.with_options(timeout_seconds=15)(
                server_down_ok=True, purpose="pre-upgrade", concurrency_limits=[store_slot]
            )

    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        locked_safety_backup()
    elapsed = time.monotonic() - started
    assert type(raised.value).__name__ == "FlowRunTimeoutError", raised.value
    assert "15.0 second" in str(raised.value), raised.value
    assert elapsed < 90, elapsed
    assert pid_file.exists() and _gone(pid_file)  # pg_dump ran, hung, and was killed
    # Everything the run held is free: the next destructive run gets the lock at once.
    assert occupied_slots(name) == 0
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(store_slot).active_slots == 0
    with destructive_lock(name, timeout_seconds=0):
        pass


def test_the_command_line_says_a_timed_out_run_in_one_sentence(
    prefect_harness, hung_server, tmp_path
):
    """``letta-ops backup`` stopped at ``LETTA_OPS_TIMEOUT_BACKUP``: exit 1, one sentence naming
    the variable. (Without ``server_down_ok`` this run is stopped while it still retries the
    server that is down; the hung dump itself is the test above.)"""
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "LETTA_OPS_TIMEOUT_BACKUP": "15",  # read where the flows are imported
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "letta_ops.cli", "backup", "--json", "--allow-partial-agents"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("letta-ops: error: ") and "LETTA_OPS_TIMEOUT_BACKUP" in line, line
    assert json.loads(done.stdout)["exit_code"] == 1
    assert time.monotonic() - started < 120
