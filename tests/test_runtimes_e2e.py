"""Upgrade and roll back servers letta-ops does not run itself: Docker Compose, operator
commands, and an operator's hands.

**Docker is a stand-in here** (``tests/fixtures/docker_standin.py``): no Docker engine can run
on this machine. The stand-in ``docker`` on PATH implements the ``docker compose`` subset
letta-ops calls by running the *real* Letta server of the tag the compose file pins, with the
service's environment, against the test PostgreSQL, and emulates the image's entrypoint
(``alembic upgrade head``, then ``letta server``). So compose upgrades and rollbacks below run
end to end on real Letta and real data; only the container engine is not real.

The command runtime drives real scripts (the operator's "deploy hooks") that start and stop a
real server; the manual runtime pauses the run in Prefect, the test does what the instruction
says and resumes the run through the Prefect API, as an operator would in the UI.

Every before/after comparison uses the tests' own oracle (SQL per table and per agent, agents
over HTTP).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from letta_ops.blocks.letta_runtime import RuntimeRefused
from letta_ops.flows.rollback import rollback
from letta_ops.flows.steps.upgrade_steps import UpgradeFailed
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.docker_compose import run_compose
from letta_ops.tasks.letta.health import probe_health, wait_for_health
from letta_ops.tasks.postgres.embedded import free_loopback_port
from letta_ops.tasks.runtimes.compose import compose_image_tag
from tests.fixtures.letta import NEW_VERSION, seed_agents
from tests.fixtures.oracle import http_agents, http_version, sql_agents, sql_table_counts

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
REPO = Path(__file__).resolve().parents[1]

COMPOSE = """\
# The operator's own compose file: letta-ops changes one line and keeps the rest.
services:
  letta_db:
    image: pgvector/pgvector:pg16   # the database: never touched
    environment:
      POSTGRES_PASSWORD: ${{LETTA_PG_PASSWORD:-letta}}

  # the server itself
  letta_server:
    image: letta/letta:{tag}  # pinned by letta-ops
    depends_on:
      - letta_db
    ports:
      - "127.0.0.1:{port}:8283"
    environment:
      LETTA_PG_URI: ${{LETTA_PG_URI}}
"""


def _lines_but_image(text: str) -> list[str]:
    return [line for line in text.splitlines() if "image: letta/letta:" not in line]


def _server_env(monkeypatch, database, base_url: str, name: str, bucket: str) -> None:
    monkeypatch.setenv("LETTA_BASE_URL", base_url)
    monkeypatch.setenv("LETTA_PG_URI", database.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", name)
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")


def _snapshot(database, base_url: str) -> tuple:
    return http_agents(base_url), sql_table_counts(database), sql_agents(database)


def _compose_server(
    docker_standin, database, monkeypatch, tmp_path, name: str, bucket: str
) -> tuple[str, Path]:
    """The operator's compose file and server, as they run it: ``docker compose up -d``
    (the image migrates); the letta-ops environment points at it. Returns (URL, file)."""
    monkeypatch.setenv("PATH", f"{docker_standin}{os.pathsep}{os.environ['PATH']}")
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    compose_file = tmp_path / "docker-compose.letta.yml"
    compose_file.write_text(COMPOSE.format(tag=FROM_VERSION, port=port))
    _server_env(monkeypatch, database, base_url, name, bucket)
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "compose")
    monkeypatch.setenv("LETTA_OPS_COMPOSE_FILE", str(compose_file))
    run_compose(["docker", "compose", "-f", str(compose_file), "up", "-d", "letta_server"])
    wait_for_health(base_url, FROM_VERSION, timeout=300)
    from letta_ops.blocks.letta_server import LettaServer
    from letta_ops.tasks.letta.api import LettaClient

    with LettaClient(LettaServer(name=name, base_url=base_url)) as client:
        seed_agents(client, 5, prefix=name)
    return base_url, compose_file


def test_compose_upgrade_failed_upgrade_and_rollback(
    docker_standin, make_database, s3_env, s3_bucket, monkeypatch, prefect_harness, tmp_path
):
    """Server A: the database on a published port, pg tools from letta-ops' own install."""
    database = make_database("compose")
    _, bucket, _ = s3_bucket
    base_url, compose_file = _compose_server(
        docker_standin, database, monkeypatch, tmp_path, "compose-a", bucket
    )
    original = compose_file.read_text()
    before = _snapshot(database, base_url)

    # --- a compose file still on 'latest' is refused by pre-flight, with the fix -----------
    latest = tmp_path / "latest.yml"
    latest.write_text(original.replace(f"letta/letta:{FROM_VERSION}", "letta/letta:latest"))
    monkeypatch.setenv("LETTA_OPS_COMPOSE_FILE", str(latest))
    with pytest.raises(RuntimeRefused, match="'latest'.*pin it first.*letta/letta:X.Y.Z"):
        upgrade(NEW_VERSION, dry_run=True)
    monkeypatch.setenv("LETTA_OPS_COMPOSE_FILE", str(compose_file))
    assert http_version(base_url) == FROM_VERSION  # nothing was stopped

    plan = upgrade(NEW_VERSION, dry_run=True).plan
    assert plan.runtime.startswith("Docker Compose:") and "letta_server" in plan.runtime

    # --- an upgrade that fails after the stop is rolled back, compose file included -------
    state = upgrade(NEW_VERSION, strategy="migrate", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed, match="rollback restored"):
        state.result()
    assert http_version(base_url) == FROM_VERSION
    assert _snapshot(database, base_url) == before
    assert compose_file.read_text() == original  # the pin put back, comments intact

    # --- the migrate upgrade -----------------------------------------------------------------
    report = upgrade(NEW_VERSION, strategy="migrate")
    assert report.outcome == "succeeded"
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == before[0]
    upgraded = compose_file.read_text()
    assert compose_image_tag(upgraded, "letta_server") == NEW_VERSION
    assert _lines_but_image(upgraded) == _lines_but_image(original)

    # --- rollback to the pre-upgrade set: the compose file as it was in the set -------------
    rolled = rollback(backup_set=report.backup_set)
    assert rolled.outcome == "succeeded"
    assert http_version(base_url) == FROM_VERSION
    assert _snapshot(database, base_url) == before
    assert compose_file.read_text() == original


def test_compose_rebuild_on_a_second_server_with_pg_tools_in_the_database_container(
    docker_standin,
    make_database,
    pg16_cluster,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    tmp_path,
):
    """Server B: PostgreSQL 16 in its own compose service (``pgvector/pgvector:pg16``), reached
    by pg_dump/pg_restore only through ``docker compose exec`` with that container's tools (here
    the stand-in runs PostgreSQL 16's own tools against the session's PG 16 cluster). letta-ops'
    own client tools are made unusable, so every dump and restore must go through the container.
    """
    from tests.fixtures.docker_standin import PG_BIN_ENV, PG_HOST_ENV, PG_PORT_ENV

    database = make_database("compose_b", cluster=pg16_cluster)
    monkeypatch.setenv(PG_BIN_ENV, str(pg16_cluster.bin_dir))
    monkeypatch.setenv(PG_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(PG_PORT_ENV, str(pg16_cluster.port))
    monkeypatch.setenv("LETTA_OPS_PG_COMPOSE_SERVICE", "letta_db")
    monkeypatch.setenv("LETTA_OPS_PG_BIN", str(tmp_path / "no-client-tools-here"))
    _, bucket, _ = s3_bucket
    base_url, compose_file = _compose_server(
        docker_standin, database, monkeypatch, tmp_path, "compose-b", bucket
    )
    original = compose_file.read_text()
    before = _snapshot(database, base_url)

    plan = upgrade(NEW_VERSION, strategy="rebuild", dry_run=True).plan
    assert "inside service letta_db" in plan.pg_tools, plan

    # --- the rebuild upgrade: dump through exec, empty, migrate, import the agents -----------
    rebuilt = upgrade(NEW_VERSION, strategy="rebuild")
    assert rebuilt.outcome == "succeeded"
    assert http_version(base_url) == NEW_VERSION
    assert sorted(http_agents(base_url).values()) == sorted(before[0].values())
    assert compose_image_tag(compose_file.read_text(), "letta_server") == NEW_VERSION
    assert _lines_but_image(compose_file.read_text()) == _lines_but_image(original)

    # --- rollback to the pre-upgrade set: pg_restore (16) inside the container -------------
    rolled = rollback(backup_set=rebuilt.backup_set)
    assert rolled.outcome == "succeeded"
    assert http_version(base_url) == FROM_VERSION
    assert _snapshot(database, base_url) == before
    assert compose_file.read_text() == original

    # Every pg tool ran in the database container, with the password handed over by name.
    execs = [json.loads(line) for line in _exec_log(compose_file).read_text().splitlines()]
    tools = {entry["tool"] for entry in execs}
    assert {"pg_dump", "pg_restore"} <= tools, tools
    assert all(entry["service"] == "letta_db" for entry in execs)
    assert all("PGPASSWORD" in entry["variables"] for entry in execs if entry["tool"] != "rm")


def _exec_log(compose_file: Path) -> Path:
    from tests.fixtures.docker_standin import ComposeProject, exec_log, project_name, state_root

    name = project_name(None, {}, None, compose_file.parent)
    return exec_log(ComposeProject(compose_file, name, {}, state_root(compose_file, os.environ)))


def _run_hook(path: Path, *args: str) -> None:
    done = subprocess.run([str(path), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{path.name} {args}: {done.stderr[-2000:]}"


def _hook(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n# the operator's deploy hook (a test script)\nset -e\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_command_and_manual_runtimes_upgrade_and_roll_back(
    make_database, s3_env, s3_bucket, monkeypatch, prefect_harness, tmp_path
):
    """The operator's server runs under a supervisor letta-ops does not know; here its
    start/stop hooks run Letta through a process runtime of their own state directory."""
    database = make_database("command")
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    _, bucket, _ = s3_bucket
    _server_env(monkeypatch, database, base_url, "hooked", bucket)
    supervisor = tmp_path / "supervisor"
    python = shlex.quote(sys.executable)
    hook_env = (
        f"cd {shlex.quote(str(REPO))}; export LETTA_OPS_RUNTIME=process "
        f"LETTA_OPS_STATE_DIR={shlex.quote(str(supervisor))} LETTA_OPS_SERVER_NAME=hooked"
    )
    cli = f"{hook_env}\nexec {python} -m letta_ops.cli runtime"
    start = _hook(tmp_path / "letta-start", f'{cli} start --version "$1" --json > /dev/null')
    stop = _hook(tmp_path / "letta-stop", f"{cli} stop")
    migrate = _hook(tmp_path / "letta-migrate", f'{cli} migrate --version "$1"')
    _run_hook(migrate, FROM_VERSION)
    _run_hook(start, FROM_VERSION)
    try:
        _command_then_manual(database, base_url, start, stop, monkeypatch)
    finally:
        _run_hook(stop)  # the supervisor's server, whatever happened


def _command_then_manual(database, base_url: str, start: Path, stop: Path, monkeypatch) -> None:
    wait_for_health(base_url, FROM_VERSION, timeout=30)
    from letta_ops.blocks.letta_server import LettaServer
    from letta_ops.tasks.letta.api import LettaClient

    with LettaClient(LettaServer(name="hooked", base_url=base_url)) as client:
        seed_agents(client, 4, prefix="hooked")
    before = _snapshot(database, base_url)

    # --- command runtime: upgrade, then rollback ---------------------------------------------
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "command")
    monkeypatch.setenv("LETTA_OPS_STOP_COMMAND", str(stop))
    monkeypatch.setenv("LETTA_OPS_START_COMMAND", f"{start} {{version}}")
    report = upgrade(NEW_VERSION, strategy="migrate")
    assert report.outcome == "succeeded"
    assert report.plan.runtime.startswith("operator commands:")
    assert http_version(base_url) == NEW_VERSION and http_agents(base_url) == before[0]
    rolled = rollback(backup_set=report.backup_set)
    assert rolled.outcome == "succeeded"
    assert http_version(base_url) == FROM_VERSION
    assert _snapshot(database, base_url) == before

    # --- manual runtime: the run pauses; the "operator" acts, then resumes it ------------------
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "manual")
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(report=upgrade(NEW_VERSION)), daemon=True)
    run.start()
    instructions = []
    for expected, act, resume in (
        ("Stop the Letta server", lambda: _run_hook(stop), _resume_by_api),
        (f"Start Letta {NEW_VERSION}", lambda: _run_hook(start, NEW_VERSION), _resume_by_cli),
    ):
        run_id, instruction = _wait_for_pause()
        assert expected in instruction, instruction
        instructions.append(instruction)
        act()
        resume(run_id)
    run.join(timeout=600)
    assert done["report"].outcome == "succeeded", done
    assert http_version(base_url) == NEW_VERSION and http_agents(base_url) == before[0]
    assert probe_health(base_url)["version"] == NEW_VERSION


def _wait_for_pause(timeout: float = 600) -> tuple[str, str]:
    """The paused upgrade run and the instruction it shows (its manual-step artifact)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import ArtifactSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            if runs:
                [artifact] = client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["manual-step"])),
                    sort=ArtifactSort.CREATED_DESC,
                    limit=1,
                )
                return str(runs[0].id), artifact.description or ""
            time.sleep(1)
    raise AssertionError("the run never paused for the operator")


def _resume_by_api(run_id: str) -> None:
    """As the UI's Resume button does."""
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    resume_flow_run(UUID(run_id))


def _resume_by_cli(run_id: str) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-m", "letta_ops.cli", "resume", run_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"resumed": run_id}
