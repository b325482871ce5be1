"""The ``docker`` stand-in (tests/fixtures/docker_standin.py) that later Compose e2e tests use.

The parsing, interpolation and port tests are pure. The state tests use a ``sleep`` process as
the recorded container. The exec test runs the real pg tools against the session's PostgreSQL;
the e2e test runs the real Letta 0.16.2 server, migrated by the stand-in's entrypoint.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest
import sqlalchemy as sa

from letta_ops.tasks.docker_compose import compose_command
from letta_ops.tasks.letta.health import wait_for_health
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.postgres.embedded import free_loopback_port
from letta_ops.tasks.postgres.letta_schema import connect
from tests.fixtures.docker_standin import (
    PG_BIN_ENV,
    PG_HOST_ENV,
    PG_PORT_ENV,
    REGISTRY_ENV,
    STATE_ROOT_ENV,
    ComposeProject,
    Container,
    Invocation,
    StandinError,
    environment_entries,
    interpolate,
    load_project,
    main,
    parse_invocation,
    parse_options,
    pinned_letta_version,
    published_port,
    read_container,
    service_environment,
    stop_container,
    write_private_json,
)

#: The fixture, made visible to this module (it is not among conftest's ``pytest_plugins``).

VERSION = "0.16.2"

E2E_COMPOSE = """\
# like an operator's file: a database service and the pinned server
services:
  letta_db:
    image: ankane/pgvector:v0.5.1
    environment:
      POSTGRES_USER: ${LETTA_PG_USER:-letta}
      POSTGRES_PASSWORD: ${LETTA_PG_PASSWORD:-letta}
      POSTGRES_DB: letta

  letta_server:
    image: letta/letta:0.16.2
    depends_on:
      - letta_db
    ports:
      - "127.0.0.1:@PORT@:8283"
    environment:
      LETTA_PG_URI: ${LETTA_PG_URI}
      OPENAI_API_KEY: ${OPENAI_API_KEY:-}
"""


def _invocation(compose_file: str | None = None, project: str | None = None) -> Invocation:
    return Invocation(compose_file=compose_file, project=project, command="ps", args=[])


# ------------------------------------------------------------------------------ argv parsing


@pytest.mark.parametrize(
    "argv",
    [
        ["compose", "-f", "x.yml", "-p", "proj", "up", "-d", "letta_server"],
        ["compose", "-p", "proj", "--file", "x.yml", "up", "-d", "letta_server"],
        ["compose", "--project-name=proj", "--file=x.yml", "up", "-d", "letta_server"],
    ],
)
def test_global_options_come_in_any_order(argv):
    assert parse_invocation(argv) == Invocation("x.yml", "proj", "up", ["-d", "letta_server"])


def test_no_global_options_means_defaults():
    assert parse_invocation(["compose", "ps", "-a"]) == Invocation(None, None, "ps", ["-a"])


@pytest.mark.parametrize(
    "argv",
    [["swarm", "init"], [], ["compose"], ["compose", "-f", "a.yml", "-f", "b.yml", "ps"]],
)
def test_unsupported_invocations_are_refused(argv):
    with pytest.raises(StandinError, match="letta-ops docker stand-in"):
        parse_invocation(argv)


def test_exec_keeps_the_command_and_its_dashes_verbatim():
    from tests.fixtures.docker_standin import _EXEC

    options, rest = parse_options("exec", ["-T", "letta_db", "psql", "-c", "select 1"], _EXEC)
    assert options == {"no_tty": True}
    assert rest == ["letta_db", "psql", "-c", "select 1"]


def test_unknown_subcommand_options_are_refused():
    from tests.fixtures.docker_standin import _PS

    with pytest.raises(StandinError, match="'-q'.*stand-in"):
        parse_options("compose ps", ["-q"], _PS)


def test_main_prints_one_line_naming_the_standin(capsys):
    assert main(["compose", "down"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "letta-ops test stand-in" in err and "down" in err
    assert main(["compose", "version"]) == 0
    assert "Docker Compose version v2" in capsys.readouterr().out


# ------------------------------------------------------------------------------ project and file


def test_default_file_and_project_name_like_compose(tmp_path, monkeypatch):
    directory = tmp_path / "My Letta.Stack"
    directory.mkdir()
    (directory / "docker-compose.yml").write_text(E2E_COMPOSE)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    project = load_project(_invocation(), {}, directory)
    assert project.file == (directory / "docker-compose.yml").resolve()
    assert project.name == "mylettastack"
    assert project.state_root == project.directory / ".docker-standin"
    assert project.container_dir("letta_server") == (
        project.directory / ".docker-standin" / "mylettastack" / "letta_server"
    )


def test_project_name_precedence_and_state_root_override(tmp_path):
    (tmp_path / "c.yml").write_text("name: fromfile\n" + E2E_COMPOSE)
    assert load_project(_invocation("c.yml"), {}, tmp_path).name == "fromfile"
    env = {"COMPOSE_PROJECT_NAME": "fromenv", STATE_ROOT_ENV: str(tmp_path / "root")}
    project = load_project(_invocation("c.yml"), env, tmp_path)
    assert project.name == "fromenv"
    assert project.container_dir("letta_server") == tmp_path / "root/fromenv/letta_server"
    assert load_project(_invocation("c.yml", "cli"), env, tmp_path).name == "cli"
    with pytest.raises(StandinError, match="invalid project name"):
        load_project(_invocation("c.yml", "Bad Name"), {}, tmp_path)


def test_missing_file_and_unknown_service(tmp_path):
    with pytest.raises(StandinError, match="no configuration file"):
        load_project(_invocation(), {}, tmp_path)
    (tmp_path / "compose.yaml").write_text(E2E_COMPOSE)
    with pytest.raises(StandinError, match="no such service: nope"):
        load_project(_invocation(), {}, tmp_path).service("nope")


# ------------------------------------------------------------------------------ interpolation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${SET}", "v"),
        ("$SET/x", "v/x"),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:-d}", "v"),
        ("${UNSET:-${SET}x}", "vx"),
        ("${SET:+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("$$SET costs $$5", "$SET costs $5"),
        ("a $ b", "a $ b"),
        ("${DOLLAR}", "p$SET"),  # values are not interpolated again
    ],
)
def test_interpolation_forms(text, expected):
    variables = {"SET": "v", "EMPTY": "", "DOLLAR": "p$SET"}
    assert interpolate(text, variables, warn=lambda _m: None) == expected


def test_unset_variables_warn_and_required_ones_fail():
    warnings: list[str] = []
    assert interpolate("${NOPE}", {}, warn=warnings.append) == ""
    assert warnings == ['The "NOPE" variable is not set. Defaulting to a blank string.']
    with pytest.raises(StandinError, match="required variable URI is missing a value: set it"):
        interpolate("${URI:?set it}", {"URI": ""})
    with pytest.raises(StandinError, match="invalid interpolation"):
        interpolate("${UNCLOSED", {})


def test_environment_mapping_list_and_pass_through():
    variables = {"FROM_CALLER": "c"}
    assert environment_entries(
        {"A": "1", "B": True, "FROM_CALLER": None, "GONE": None}, variables
    ) == {
        "A": "1",
        "B": "true",
        "FROM_CALLER": "c",
    }
    assert environment_entries(["A=1=2", "FROM_CALLER", "GONE", "E="], variables) == {
        "A": "1=2",
        "FROM_CALLER": "c",
        "E": "",
    }


def test_service_environment_from_dotenv_env_file_and_caller(tmp_path):
    from tests.fixtures.docker_standin import interpolate_tree, interpolation_variables

    (tmp_path / ".env").write_text("LETTA_PG_URI=from-dotenv\nONLY_DOTENV=d\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "letta.env").write_text("FROM_FILE=f\nOVERRIDDEN=file\n")
    config = {
        "env_file": ["conf/letta.env", {"path": "absent.env", "required": False}],
        "environment": {
            "LETTA_PG_URI": "${LETTA_PG_URI}",
            "DOT": "${ONLY_DOTENV}",
            "OVERRIDDEN": "env",
        },
    }
    variables = interpolation_variables(tmp_path, {"LETTA_PG_URI": "from-caller"})
    resolved = interpolate_tree(config, variables)
    assert service_environment(resolved, tmp_path, variables) == {
        "FROM_FILE": "f",
        "OVERRIDDEN": "env",
        "LETTA_PG_URI": "from-caller",  # the caller's environment wins over .env
        "DOT": "d",
    }
    with pytest.raises(StandinError, match="env file .*missing.env not found"):
        service_environment({"env_file": "missing.env"}, tmp_path, {})


# ------------------------------------------------------------------------------ image and ports


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (["8283:8283"], 8283),
        (["127.0.0.1:9001:8283"], 9001),
        (["0.0.0.0:9002:8283/tcp"], 9002),
        (["5432:5432", "9003:8283"], 9003),
        ([{"target": 8283, "published": "9004", "host_ip": "127.0.0.1"}], 9004),
        ([{"target": 8283, "published": 9005}], 9005),
    ],
)
def test_published_port_of_8283(ports, expected):
    assert published_port(ports, "letta_server") == expected


@pytest.mark.parametrize(
    "ports",
    [None, [], ["9000:80"], ["8283"], ["127.0.0.1::8283"], ["9000-9001:8283"], ["9000:8283/udp"]],
)
def test_ports_without_one_fixed_host_port_are_refused(ports):
    with pytest.raises(StandinError, match="8283"):
        published_port(ports, "letta_server")


@pytest.mark.parametrize("image", ["letta/letta:0.16.2", "docker.io/letta/letta:0.14.0"])
def test_pinned_images_are_accepted(image):
    assert pinned_letta_version(image, "s") == image.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    "image",
    [
        "letta/letta:latest",
        "letta/letta",
        "letta/letta:0.16",
        "letta/letta@sha256:" + "a" * 64,
        "ghcr.io/other/letta:0.16.2",
        "letta/letta:0.34.0",  # Letta Code, not a server
    ],
)
def test_unpinned_or_foreign_images_are_refused(image):
    with pytest.raises(StandinError):
        pinned_letta_version(image, "letta_server")


def test_up_refuses_latest_and_starts_nothing(tmp_path, monkeypatch, capsys):
    latest = E2E_COMPOSE.replace("letta/letta:0.16.2", "letta/letta:latest")
    (tmp_path / "docker-compose.yml").write_text(latest)
    monkeypatch.chdir(tmp_path)
    assert main(["compose", "up", "-d", "letta_server"]) == 1
    err = capsys.readouterr().err
    assert "only runs pinned letta/letta:X.Y.Z tags" in err and "stand-in" in err
    assert not (tmp_path / ".docker-standin").exists()


# ------------------------------------------------------------------------------ state, ps, stop


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def _record(project: ComposeProject, proc: subprocess.Popen, create_time: float) -> Container:
    directory = project.container_dir("letta_server")
    directory.mkdir(parents=True, exist_ok=True)
    container = Container(
        project=project.name,
        service="letta_server",
        image="letta/letta:0.16.2",
        version=VERSION,
        port=9,
        pid=proc.pid,
        create_time=create_time,
        started_at="2026-01-01T00:00:00+00:00",
        state_dir=str(directory),
        log_file=str(directory / "container.log"),
        compose_file=str(project.file),
    )
    write_private_json(directory / "container.json", asdict(container))
    (directory / "container.log").write_bytes(b"one\ntwo\nthree\n")
    return container


def _ps(capsys, *args: str) -> list[dict]:
    assert main(["compose", "ps", "--format", "json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_ps_logs_and_stop_act_only_on_the_recorded_process(tmp_path, monkeypatch, capsys):
    (tmp_path / "docker-compose.yml").write_text(E2E_COMPOSE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path / "state"))
    project = load_project(_invocation(), os.environ, tmp_path)
    proc = _sleeper()
    try:
        # A record whose create time is not the process's: another process reusing the pid.
        impostor = _record(project, proc, psutil.Process(proc.pid).create_time() - 100)
        assert _ps(capsys) == []
        assert main(["compose", "stop", "letta_server"]) == 0
        assert not stop_container(impostor)
        assert proc.poll() is None

        _record(project, proc, psutil.Process(proc.pid).create_time())
        [row] = _ps(capsys, "letta_server")
        assert row["Name"] == f"{project.name}-letta_server-1"
        assert (row["State"], row["Image"], row["ExitCode"]) == ("running", "letta/letta:0.16.2", 0)

        assert main(["compose", "logs", "--tail", "2", "--no-color", "letta_server"]) == 0
        assert capsys.readouterr().out == "letta_server-1  | two\nletta_server-1  | three\n"

        assert main(["compose", "stop", "-t", "5"]) == 0
        assert proc.wait(timeout=10) is not None
        assert _ps(capsys) == []
        [row] = _ps(capsys, "-a")
        assert row["State"] == "exited" and row["ExitCode"] != 0
        assert main(["compose", "stop", "letta_server"]) == 0  # not running: fine
    finally:
        proc.kill()
        proc.wait()


def test_fixture_writes_an_executable_docker(docker_standin):
    script = docker_standin / "docker"
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith(f"#!{sys.executable}\n")
    result = subprocess.run(
        [str(script), "compose", "version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "letta-ops test stand-in" in result.stdout


# ------------------------------------------------------------------------------ exec


def _runner(
    bin_dir: Path, compose: Path, env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess]:
    full = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}

    def docker(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            compose_command(compose, *args), env=full, input=stdin, capture_output=True, timeout=600
        )

    return docker


def test_exec_runs_the_pg_tools_against_the_test_cluster(docker_standin, pg_cluster, tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(E2E_COMPOSE.replace("@PORT@", "8283"))
    env = {
        **os.environ,
        PG_BIN_ENV: str(pg_cluster.bin_dir),
        PG_HOST_ENV: "127.0.0.1",
        PG_PORT_ENV: str(pg_cluster.port),
        "PGUSER": pg_cluster.superuser,
        "PGPASSWORD": pg_cluster.password,
        "PGDATABASE": "postgres",
    }
    docker = _runner(docker_standin, compose, env)

    # As with Docker, the caller's variables reach the container only through -e.
    passed = ("-e", "PGUSER", "-e", "PGPASSWORD", "-e", "PGDATABASE")
    unpassed = docker("exec", "-T", "letta_db", "psql", "-At", "-c", "select 1")
    assert unpassed.returncode != 0
    assert docker("exec", "-T", *passed, "letta_db", "pg_isready").returncode == 0
    result = docker("exec", "-T", *passed, "letta_db", "psql", "-At", "-c", "select 40 + 2")
    assert (result.returncode, result.stdout) == (0, b"42\n")
    piped = docker("exec", "-T", *passed, "letta_db", "psql", "-At", stdin=b"select 'a\xc3\xa9';\n")
    assert piped.stdout == "aé\n".encode()
    failed = docker(
        "exec", "-T", *passed, "letta_db", "psql", "-v", "ON_ERROR_STOP=1", stdin=b"select 1/0;"
    )
    assert failed.returncode == 3 and b"division by zero" in failed.stderr
    refused = docker("exec", "-T", "letta_db", "sh", "-c", "id")
    assert refused.returncode == 1 and b"stand-in" in refused.stderr
    assert docker("exec", "-T", "letta_server", "psql").returncode == 1

    # cp into the container, read there by absolute path (plain and --opt=), then rm -f.
    script = tmp_path / "query.sql"
    script.write_text("select 6 * 7;\n")
    assert docker("cp", str(script), "letta_db:/tmp/q.sql").returncode == 0
    read = docker("exec", "-T", *passed, "letta_db", "psql", "-At", "--file=/tmp/q.sql")
    assert (read.returncode, read.stdout) == (0, b"42\n")
    read = docker("exec", "-T", *passed, "letta_db", "psql", "-At", "-f", "/tmp/q.sql")
    assert read.stdout == b"42\n"
    assert docker("exec", "-T", "letta_db", "rm", "-f", "/tmp/q.sql").returncode == 0
    gone = docker("exec", "-T", *passed, "letta_db", "psql", "-At", "-f", "/tmp/q.sql")
    assert gone.returncode != 0
    assert docker("exec", "-T", "letta_db", "rm", "-f", "/etc/passwd").returncode == 1
    assert docker("cp", str(script), "letta_server:/tmp/q.sql").returncode == 1


# ------------------------------------------------------------------------------ e2e


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ps_rows(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def _cmdlines(pid: int) -> list[str]:
    proc = psutil.Process(pid)
    return [" ".join(p.cmdline()) for p in [proc, *proc.children(recursive=True)]]


def _wait_exited(docker: Callable[..., subprocess.CompletedProcess], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [row] = _ps_rows(docker("ps", "-a", "--format", "json", "letta_server"))
        if row["State"] == "exited":
            return row
        time.sleep(2)
    raise AssertionError(f"the container did not exit within {timeout:g} s")


@pytest.mark.e2e
def test_up_migrates_and_serves_the_pinned_server_then_stop(
    docker_standin, make_database, tmp_path
):
    database = make_database("standin")
    uri, password = database.letta_pg_uri(), str(database.parts["password"])
    port = free_loopback_port()
    compose = tmp_path / "Operator Stack" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text(E2E_COMPOSE.replace("@PORT@", str(port)))
    env = {k: v for k, v in os.environ.items() if k not in (STATE_ROOT_ENV, REGISTRY_ENV)}
    docker = _runner(docker_standin, compose, {**env, "LETTA_PG_URI": uri})
    base_url = f"http://127.0.0.1:{port}"
    state = compose.parent / ".docker-standin" / "operatorstack" / "letta_server"

    up = docker("up", "-d", "letta_server")
    assert up.returncode == 0, up.stderr
    # Structural, not a wall-clock bound (a cold runtime cache takes minutes): `up -d`
    # returned before the server could answer, and the container it left is running.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base_url}/v1/health/", timeout=2)
    [row] = _ps_rows(docker("ps", "--format", "json"))
    assert row["State"] == "running"

    try:
        health = wait_for_health(base_url, VERSION, timeout=240)
    except (TimeoutError, RuntimeError) as exc:
        log = docker("logs", "--tail", "60", "letta_server").stdout.decode(errors="replace")
        pytest.fail(f"{exc}\n{log}")
    assert health["version"] == VERSION

    [row] = _ps_rows(docker("ps", "--format", "json"))
    assert row["Name"] == "operatorstack-letta_server-1"
    assert (row["Service"], row["Image"], row["State"]) == (
        "letta_server",
        "letta/letta:0.16.2",
        "running",
    )
    container = read_container(state)
    assert container is not None
    again = docker("up", "-d", "letta_server")  # same image, running: nothing to do
    assert again.returncode == 0 and b"Running" in again.stderr
    assert read_container(state) == container

    with connect(database) as conn:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert revision == ALEMBIC_HEADS[VERSION]  # the entrypoint migrated the empty database

    record_text = (state / "container.json").read_text()
    assert password not in record_text and uri not in record_text
    assert not any(password in line for line in _cmdlines(container.pid))
    server = next(
        p for p in psutil.Process(container.pid).children(recursive=True) if "server" in p.cmdline()
    )
    assert server.environ()["LETTA_PG_URI"] == uri  # reached it through its environment
    home = Path(server.environ()["HOME"])
    assert home == state / "home" and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert b"alembic upgrade head" in docker("logs", "letta_server").stdout

    stop = docker("stop", "letta_server")
    assert stop.returncode == 0, stop.stderr
    assert _ps_rows(docker("ps", "--format", "json")) == []
    [row] = _ps_rows(docker("ps", "-a", "--format", "json"))
    assert row["State"] == "exited"
    assert not _answers(port)
    assert docker("stop", "letta_server").returncode == 0

    # The same container started again with a wrong password: the entrypoint's migration
    # fails, so the container exits non-zero and the server never listens.
    parsed = urlparse(uri)
    wrong = f"{parsed.username}:wrong-password-1234@{parsed.hostname}:{parsed.port}"
    bad_uri = parsed._replace(netloc=wrong).geturl()
    failing = _runner(docker_standin, compose, {**env, "LETTA_PG_URI": bad_uri})
    assert failing("up", "-d", "letta_server").returncode == 0
    row = _wait_exited(failing, timeout=180)
    assert row["ExitCode"] != 0
    assert not _answers(port)
    log = failing("logs", "letta_server").stdout
    assert b"migration failed" in log and b"wrong-password-1234" not in log
