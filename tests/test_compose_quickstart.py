"""The README's Compose quickstart, checked against the code it tells an operator to run.

Why: a quickstart goes stale silently (a renamed option, a variable nobody reads, a schedule
moved in ``prefect.yaml``), and the operator who follows it is the one least able to tell.
No Docker engine runs here (none is installed, and no image registry is reachable), so the
stack is never started: what can be proven without one is. The compose file parses, its Letta
service is pinned to a release letta-ops accepts (by the runtime's and doctor's own readers);
the letta-ops service's environment builds, through ``load_profile``, the compose runtime of
that file's Letta service and a store; the hosts it names are services of the file; every
``letta-ops`` command shown parses with the CLI's own parser and its ``--help`` works; and each
deployment named with its time is in ``prefect.yaml`` on that schedule.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from letta_ops.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Quickstart: a Docker Compose stack"
DAYS = {"Sundays": "0", "Mondays": "1", "Saturdays": "6"}


def section() -> str:
    readme = (REPO / "README.md").read_text()
    assert HEADING in readme, "the README has no Compose quickstart"
    return readme.split(HEADING, 1)[1].split("\n## ", 1)[0]


def fenced(kind: str) -> list[str]:
    """The section's code blocks of one kind, their list indentation removed."""
    blocks = re.findall(rf"\n( *)```{kind}\n(.*?)\n\1```", section(), flags=re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


def compose_text() -> str:
    [text] = fenced("yaml")
    return text


def compose() -> dict:
    return yaml.safe_load(compose_text())


def commands() -> list[list[str]]:
    """Every ``letta-ops`` argv the section runs: its shell lines (through ``docker compose
    exec letta-ops``) and the letta-ops service's own command."""
    argvs = []
    for block in fenced("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:4] == ["docker", "compose", "exec", "letta-ops"]:
                assert words[4] == "letta-ops", line
                argvs.append(words[5:])
    inline = re.findall(r"`docker compose exec letta-ops letta-ops ([^`]+)`", section())
    argvs += [shlex.split(text) for text in inline]
    argvs.append(compose()["services"]["letta-ops"]["command"][1:])
    return argvs


def interpolated(value: str) -> str:
    """A value as Compose would fill it from the operator's ``.env`` (made-up values)."""
    return re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: f"x{m.group(1).lower()}", value)


def test_the_compose_file_parses_and_pins_letta_to_a_release(tmp_path) -> None:
    from letta_ops.tasks.doctor.checks import check_compose_pin
    from letta_ops.tasks.letta.versions import parse_server_version
    from letta_ops.tasks.runtimes.compose import compose_image_tag

    services = compose()["services"]
    assert set(services) == {"letta_db", "letta_server", "prefect", "letta-ops"}
    assert "pgvector" in services["letta_db"]["image"]
    tag = compose_image_tag(compose_text(), "letta_server")
    assert tag and parse_server_version(tag)
    written = tmp_path / "docker-compose.yml"
    written.write_text(compose_text())
    assert check_compose_pin(written, "letta_server").status == "ok"
    prefect_tag = services["prefect"]["image"].rsplit(":", 1)[1]
    import prefect

    assert prefect_tag.startswith(prefect.__version__ + "-")  # the Prefect letta-ops runs on


def test_the_letta_ops_service_configures_the_compose_runtime(monkeypatch) -> None:
    from letta_ops.blocks.compose_runtime import DockerComposeRuntime
    from letta_ops.blocks.server_profile import load_profile
    from letta_ops.tasks.store.locations import parse_store_url

    services = compose()["services"]
    worker = services["letta-ops"]
    env = {name: interpolated(str(value)) for name, value in worker["environment"].items()}
    for name in [n for n in os.environ if n.startswith("LETTA_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    profile = load_profile(None, need_database=True)
    runtime = profile.runtime
    assert isinstance(runtime, DockerComposeRuntime)
    assert runtime.service in services and "letta/letta" in services[runtime.service]["image"]
    assert runtime.project_name == env["LETTA_OPS_COMPOSE_PROJECT"]
    assert profile.name == env["LETTA_OPS_SERVER_NAME"]
    # Every host the worker talks to is a service of this file, on the port it listens on.
    server = urlsplit(profile.server.base_url)
    assert server.hostname == runtime.service and server.port == 8283
    assert urlsplit(runtime.base_url).hostname == runtime.service
    assert profile.database is not None
    assert urlsplit(profile.database.letta_pg_uri()).hostname == "letta_db" in services
    assert urlsplit(env["PREFECT_API_URL"]).hostname in services
    server_uri = services["letta_server"]["environment"]["LETTA_PG_URI"]
    assert server_uri == worker["environment"]["LETTA_PG_URI"]  # one database, both sides
    assert parse_store_url(env["LETTA_OPS_STORE"]).scheme == "s3"
    # The compose file is reachable inside the worker at the path it has on the host.
    mounts = {m.split(":")[1]: m.split(":")[0] for m in worker["volumes"]}
    folder = str(Path(runtime.compose_file).parent)
    assert mounts[folder] == folder
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    sources = {m.split(":")[0] for svc in services.values() for m in svc.get("volumes", [])}
    assert {v for v in sources if "/" not in v} == set(compose()["volumes"])  # named ones


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a))
def test_every_command_shown_is_one_the_cli_accepts(argv, capsys) -> None:
    build_parser().parse_args(argv)  # exits 2 on an unknown command or option
    with pytest.raises(SystemExit) as done:
        main([argv[0], "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: letta-ops {argv[0]}")


def test_the_commands_cover_check_backup_serve_and_upgrade() -> None:
    named = {argv[0] for argv in commands()}
    assert {"doctor", "backup", "serve", "upgrade"} <= named


def test_each_scheduled_deployment_named_runs_when_it_says() -> None:
    listed = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    deployments = {d["name"]: d for d in listed}
    claims = re.findall(r"`([a-z-]+)` \((?:(\w+) )?(\d\d):(\d\d) UTC\)", section())
    assert len(claims) >= 3, claims
    for name, day, hour, minute in claims:
        assert name in deployments, name
        [schedule] = deployments[name]["schedules"]
        fields = schedule["cron"].split()
        assert (fields[0], fields[1]) == (str(int(minute)), str(int(hour))), name
        assert fields[4] == (DAYS[day] if day else "*"), name
        assert schedule["timezone"] == "UTC" and schedule["active"] is True


def test_the_env_file_named_holds_every_variable_the_file_requires() -> None:
    """Compose refuses to start while a ``${VAR:?}`` is unset: step 2 must name each one."""
    required = set(re.findall(r"\$\{(\w+):\?", compose_text()))
    step = section().split("2. **Start it.**", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", step))
    assert required and required == named
