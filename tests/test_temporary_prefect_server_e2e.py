"""A command run from a bare shell starts its temporary Prefect server before it imports
Prefect (issue #32: the server starts while the flow's modules import), runs its flow there,
over the SQLite database of ``PREFECT_HOME`` as Prefect's own temporary server would, and
stops it when it exits; a configured ``PREFECT_API_URL`` is left alone.

Real Prefect server (uvicorn, Prefect's app), in a child process per case; the run is read
back from the SQLite file with the test's own SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

PROBE = """
import json, os, sys
from letta_ops.tasks.runs import temporary_server
server = temporary_server.start_if_needed()
imported_before = "prefect" in sys.modules
from prefect import flow
from letta_ops.tasks.runs.lock import temporary_prefect_server
temporary_server.wait_ready(server)

@flow(name="temporary-server-probe")
def probe() -> str:
    return os.environ["PREFECT_API_URL"]

print(json.dumps({
    "started": server is not None,
    "pid": server.process.pid if server else None,
    "prefect_imported_before_start": imported_before,
    "api": probe() if server else None,
    "temporary": temporary_prefect_server() if server else None,
}))
"""

#: Only whether a server would start (nothing imports Prefect: a second each, not ten).
WOULD_START = """
import json
from letta_ops.tasks.runs import temporary_server
server = temporary_server.start_if_needed()
print(json.dumps({"started": server is not None}))
"""


def run_probe(env: dict[str, str], cwd=None, script: str = PROBE) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    return env


def test_bare_shell_runs_on_a_temporary_server_started_first_and_stopped(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    started = time.perf_counter()
    probe = run_probe(bare_env(home))
    print(f"bare-shell probe: {time.perf_counter() - started:.1f} s")

    assert probe["started"] and not probe["prefect_imported_before_start"]
    assert probe["api"].startswith("http://127.0.0.1:") and probe["api"].endswith("/api")
    assert probe["temporary"] is True  # the lock module treats its leases as this run's
    # The run was recorded by that server, in PREFECT_HOME's database.
    with sqlite3.connect(home / "prefect.db") as db:
        states = db.execute(
            "SELECT r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
            "WHERE f.name = 'temporary-server-probe'"
        ).fetchall()
    assert states == [("COMPLETED",)]
    # Stopped when the command exited: the server's process is gone.
    assert (
        not os.path.exists(f"/proc/{probe['pid']}")
        or "zombie" in open(f"/proc/{probe['pid']}/status").read().lower()
    )


def test_a_configured_api_is_left_alone(tmp_path):
    env = bare_env(tmp_path)
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    assert run_probe(env, script=WOULD_START)["started"] is False
    env.pop("PREFECT_API_URL")
    # An API configured in a settings file of the working directory: Prefect reads it.
    project = tmp_path / "project"
    project.mkdir()
    (project / "prefect.toml").write_text('[api]\nurl = "http://127.0.0.1:9/api"\n')
    assert run_probe(env, cwd=project, script=WOULD_START)["started"] is False
    env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    assert run_probe(env, script=WOULD_START)["started"] is False
