"""The runtimes' own rules, fast: which one the environment picks, what each refuses before
anything stops, and that an operator command's secrets stay in its environment.

Real servers under each runtime are in ``tests/test_runtimes_e2e.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from letta_ops.blocks.command_runtime import (
    LettaCommandRuntime,
    RuntimeCommandFailed,
    command_argv,
)
from letta_ops.blocks.compose_runtime import DockerComposeRuntime
from letta_ops.blocks.letta_runtime import RuntimeRefused
from letta_ops.blocks.manual_runtime import LettaManualRuntime
from letta_ops.blocks.process_runtime import LettaProcessRuntime
from letta_ops.blocks.server_profile import ProfileError, runtime_from_env

COMPOSE = """\
services:
  letta_server:
    image: letta/letta:{tag}  # keep this comment
    ports: ["127.0.0.1:8283:8283"]
"""


def test_the_environment_picks_the_runtime(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LETTA_OPS_RUNTIME", raising=False)
    assert isinstance(runtime_from_env("s"), LettaProcessRuntime)
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "compose")
    monkeypatch.delenv("LETTA_OPS_COMPOSE_FILE", raising=False)
    with pytest.raises(ProfileError, match="needs LETTA_OPS_COMPOSE_FILE"):
        runtime_from_env("s")
    monkeypatch.setenv("LETTA_OPS_COMPOSE_FILE", str(tmp_path / "c.yml"))
    assert isinstance(runtime_from_env("s"), DockerComposeRuntime)
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "command")
    monkeypatch.setenv("LETTA_OPS_STOP_COMMAND", "systemctl stop letta")
    monkeypatch.setenv("LETTA_OPS_START_COMMAND", "/opt/deploy/start '{version}'")
    command = runtime_from_env("s")
    assert command.stop_command == ["systemctl", "stop", "letta"]
    assert command_argv(command.start_command, "0.16.2") == ["/opt/deploy/start", "0.16.2"]
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "manual")
    assert isinstance(runtime_from_env("s"), LettaManualRuntime)
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "kubernetes")
    with pytest.raises(ProfileError, match="not a runtime; use one of process, compose"):
        runtime_from_env("s")


def test_compose_on_latest_is_refused_with_the_fix(tmp_path: Path) -> None:
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(COMPOSE.format(tag="latest"))
    runtime = DockerComposeRuntime(compose_file=compose_file)
    with pytest.raises(RuntimeRefused, match="'latest'.*pin it first: set 'image: letta/letta"):
        runtime.require_drivable()
    missing = DockerComposeRuntime(compose_file=tmp_path / "nope.yml")
    with pytest.raises(RuntimeRefused, match="does not exist"):
        missing.require_drivable()
    compose_file.write_text(COMPOSE.format(tag="0.14.0"))
    assert runtime.snapshot() == {"docker-compose.yml": compose_file.read_bytes()}
    runtime.restore_snapshot({"docker-compose.yml": COMPOSE.format(tag="0.11.7").encode()})
    assert "letta/letta:0.11.7  # keep this comment" in compose_file.read_text()
    assert "migrations by letta-ops before 'up'" in runtime.describe()


def test_command_runtime_refuses_missing_programs() -> None:
    runtime = LettaCommandRuntime(stop_command=[], start_command=["/bin/true"])
    with pytest.raises(RuntimeRefused, match="no stop_command; set it"):
        runtime.require_drivable()
    runtime = LettaCommandRuntime(stop_command=["no-such-program-here"], start_command="true")
    with pytest.raises(RuntimeRefused, match="'no-such-program-here' is not an executable"):
        runtime.require_drivable()


def test_a_failing_command_names_itself_and_never_its_secret() -> None:
    secret = "s3cr3t-token-value"
    fails = [
        sys.executable,
        "-c",
        "import os, sys; print('token', os.environ['DEPLOY_TOKEN']); "
        "sys.exit('deploy refused: quota exceeded')",
    ]
    runtime = LettaCommandRuntime(
        stop_command=fails, start_command=fails, command_env={"DEPLOY_TOKEN": secret}
    )
    logged: list[str] = []
    with pytest.raises(
        RuntimeCommandFailed, match="exited 1: deploy refused: quota exceeded"
    ) as failure:
        runtime.stop(log=logged.append)
    assert secret not in str(failure.value)
    assert all(secret not in line for line in logged)
    assert any("token" in line for line in logged)  # the output is logged, redacted


def test_manual_runtime_only_acts_inside_a_run() -> None:
    with pytest.raises(RuntimeRefused, match="inside a run that pauses"):
        LettaManualRuntime().require_drivable()
    assert "pauses in Prefect" in LettaManualRuntime().describe()


def test_each_registered_kind_names_a_real_block_driver_and_doctor_checks() -> None:
    """The registries (blocks/runtime_kinds.py, blocks/store_schemes.py) are the one place a
    runtime kind or a store scheme is added: each entry must load what it names."""
    import importlib

    from letta_ops.blocks.letta_runtime import LettaRuntime
    from letta_ops.blocks.runtime_kinds import RUNTIME_KINDS
    from letta_ops.blocks.store_schemes import STORE_SCHEMES
    from letta_ops.tasks.doctor.check_names import CHECK_NAMES

    assert set(RUNTIME_KINDS) == {"process", "compose", "command", "manual"}
    for kind in RUNTIME_KINDS.values():
        assert issubclass(kind.block_type(), LettaRuntime), kind.name
        if kind.driver:
            importlib.import_module(kind.driver)
        assert set(kind.doctor_checks) <= set(CHECK_NAMES), kind.name
    assert set(STORE_SCHEMES) == {"s3", "file"}
    for scheme in STORE_SCHEMES.values():
        block = scheme.block_type()
        assert hasattr(block, "from_location"), scheme.scheme
        importlib.import_module(scheme.driver)
        assert set(scheme.doctor_checks) <= set(CHECK_NAMES), scheme.scheme


def test_a_store_url_builds_the_block_its_scheme_registers(tmp_path: Path) -> None:
    from letta_ops.blocks.backup_store import (
        LocalBackupStore,
        S3BackupStore,
        backup_store_from_url,
    )

    s3 = backup_store_from_url("s3://bucket/letta/prod")
    assert isinstance(s3, S3BackupStore) and (s3.bucket, s3.prefix) == ("bucket", "letta/prod")
    local = backup_store_from_url(f"file://{tmp_path}/sets")
    assert isinstance(local, LocalBackupStore) and local.path == tmp_path / "sets"
