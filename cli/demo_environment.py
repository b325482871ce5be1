"""Embedded defaults for ``make demo``: PostgreSQL + pgvector, a local S3 endpoint, a pinned
Letta server with sample agents, all on 127.0.0.1 and all stopped when the demo ends.

Why a module: the demo is the first thing an operator runs, so it uses exactly the same
runtime, blocks and flows as production; only *where* things run is embedded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..blocks.letta_database import LettaDatabase
from ..blocks.letta_server import LettaServer
from ..blocks.process_runtime import LettaProcessRuntime
from ..tasks.errors import Refused
from ..tasks.letta.api import LettaClient, offline_agent_body
from ..tasks.postgres.embedded import EmbeddedPostgres, free_loopback_port
from ..tasks.postgres.letta_schema import create_database

DEMO_OLD_VERSION = "0.11.7"
DEMO_NEW_VERSION = "0.16.2"
#: Sample agents; the last one is renamed through PATCH to a name no version accepts on create.
SAMPLE_AGENTS = ("support-bot", "research-assistant", "scheduler", "ai-ml-expert")


@dataclass
class DemoEnvironment:
    root: Path
    postgres: EmbeddedPostgres
    database: LettaDatabase
    runtime: LettaProcessRuntime
    server: LettaServer
    s3_endpoint: str
    bucket: str


def require_demo_extra() -> None:
    """Refuse, before anything starts, when the demo's local S3 (moto) is not installed.

    Why an extra and not a dependency: moto's server brings Flask and a few dozen packages a
    production worker never needs; ``make demo`` and ``pip install 'letta-ops[demo]'`` add it.
    """
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise Refused(
            "letta-ops demo needs its local S3 endpoint (moto[server]), which is not installed: "
            "install letta-ops with the demo extra (pip install 'letta-ops[demo]', or make demo)."
        )


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def seed_sample_agents(client: LettaClient) -> list[dict]:
    agents = [
        client.create_agent(offline_agent_body(name, persona=f"I am {name}."))
        for name in SAMPLE_AGENTS
    ]
    client.update_agent(agents[-1]["id"], {"name": "AI/ML Expert"})
    return client.list_agents()


@contextlib.contextmanager
def demo_environment(
    version: str = DEMO_OLD_VERSION, log: Callable[[str], None] = print
) -> Iterator[DemoEnvironment]:
    """Start everything the demo needs; stop and delete all of it on exit."""
    root = Path(tempfile.mkdtemp(prefix="letta-ops-demo-"))
    os.chmod(root, 0o755)
    postgres = EmbeddedPostgres(data_dir=root / "pg" / "data")
    runtime = LettaProcessRuntime(
        server_name="demo", port=free_loopback_port(), state_dir=root / "demo"
    )  # <state root>/<server name>: where LETTA_OPS_STATE_DIR-based profiles look for it
    saved_env = {k: os.environ.get(k) for k in _S3_ENV}
    try:
        log(f"starting PostgreSQL 18 + pgvector on 127.0.0.1:{postgres.port}")
        postgres.start()
        database = LettaDatabase(uri=postgres.uri("letta"))
        create_database(database)
        with moto_endpoint() as endpoint:
            os.environ.update(
                {
                    "AWS_ACCESS_KEY_ID": "demo",
                    "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                }
            )
            log(f"local S3 endpoint (moto) on {endpoint}")
            log(f"installing/migrating Letta {version} (cached under ~/.cache/letta-ops)")
            runtime.migrate(version, database, log=log)
            runtime.start(version, database, log=log)
            server = LettaServer(name="demo", base_url=runtime.base_url)
            yield DemoEnvironment(
                root, postgres, database, runtime, server, endpoint, bucket="letta-ops-demo"
            )
    finally:
        runtime.stop()
        postgres.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
)


def prefect_ui_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("letta-ops")) / "demo-prefect"


def running_prefect_ui() -> tuple[int, str] | None:
    """The demo's Prefect server from an earlier run, if that very process still answers."""
    import json

    import httpx
    import psutil

    record = prefect_ui_state_dir() / "server.json"
    if not record.exists():
        return None
    info = json.loads(record.read_text())
    try:
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["create_time"]) > 1:
            return None
        httpx.get(f"{info['url']}/api/health", timeout=3).raise_for_status()
    except (psutil.Error, httpx.HTTPError):
        return None
    return info["pid"], info["url"]


def start_prefect_ui(log: Callable[[str], None] = print, timeout: float = 120) -> tuple[str, bool]:
    """A real Prefect server (API + UI) on loopback for the demo; reused if already up.

    Returns its URL and whether this call started it (the caller stops it if the demo fails:
    a command that fails leaves nothing of its own running)."""
    import json
    import subprocess
    import sys
    import time

    import httpx
    import psutil

    existing = running_prefect_ui()
    if existing:
        log(f"reusing the demo's Prefect server at {existing[1]} (pid {existing[0]})")
        return existing[1], False
    state = prefect_ui_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(state / "home"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
    }
    env.pop("PREFECT_API_URL", None)
    log(f"starting a Prefect server (API and UI) on {url}")
    with (state / "server.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (state / "server.json").write_text(
        json.dumps(
            {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "url": url}
        )
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited; see {state / 'server.log'}")
        try:
            httpx.get(f"{url}/api/health", timeout=2).raise_for_status()
            return url, True
        except httpx.HTTPError:
            time.sleep(1)
    _stop_process_group(proc.pid)
    (state / "server.json").unlink(missing_ok=True)
    raise RuntimeError(f"the Prefect server did not answer within {timeout} s")


def stop_prefect_ui() -> bool:
    """Stop the demo's Prefect server (by the pid letta-ops recorded when it started it)."""
    existing = running_prefect_ui()
    if existing is None:
        return False
    _stop_process_group(existing[0])
    (prefect_ui_state_dir() / "server.json").unlink(missing_ok=True)
    return True


def _stop_process_group(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the group letta-ops started (``start_new_session``), SIGKILL it after ``grace``."""
    import signal

    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=grace)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
