"""What ``pip install .`` / ``uv tool install .`` put into an environment.

A Prefect worker's environment is shared with Prefect and its collections: letta-ops must not
add generic top-level packages (``flows``, ``tasks``, ``blocks``, ``cli``) to it. The wheel is
built for real from this repository, and installed for real as a uv tool into a directory of
its own (from uv's cache: no other network than the package registry).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from letta_ops.tasks.runtimes.install import uv_binary

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_one_import_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [uv_binary(), "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("letta_ops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"letta_ops", next(t for t in top if t.endswith(".dist-info"))}
    for module in ("flows/backup.py", "tasks/store/objects.py", "blocks/letta_server.py"):
        assert f"letta_ops/{module}" in names
    assert "letta_ops/cli/main.py" in names
    assert "letta_ops/tasks/audit/migrations/versions/a1_create_audit_runs.py" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_uv_tool_install_gives_a_working_letta_ops(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "UV_TOOL_DIR": str(tmp_path / "tools"),
        "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
        "UV_PYTHON": sys.executable,  # the interpreter this suite runs on (3.11)
    }
    installed = subprocess.run(
        [uv_binary(), "tool", "install", "--quiet", str(REPO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    letta_ops = tmp_path / "bin" / "letta-ops"
    outside = {**env, "LETTA_BASE_URL": "http://127.0.0.1:9", "LETTA_OPS_STATE_DIR": str(tmp_path)}
    helped = subprocess.run(
        [str(letta_ops), "--help"], env=outside, cwd=tmp_path, capture_output=True, text=True
    )
    assert helped.returncode == 0 and "fleet-backup" in helped.stdout
    status = subprocess.run(
        [str(letta_ops), "runtime", "status", "--json"],
        env=outside,
        cwd=tmp_path,  # not the repository: only the installed package can answer
        capture_output=True,
        text=True,
    )
    assert status.returncode == 3, status.stderr  # nothing runs there: "needs action"
    assert json.loads(status.stdout)["running"] is False
    site = next((tmp_path / "tools").glob("letta-ops/lib/python*/site-packages"))
    assert (site / "letta_ops").is_dir()
    assert not [p for p in ("flows", "tasks", "blocks", "cli") if (site / p).exists()]
