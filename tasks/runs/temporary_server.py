"""The temporary Prefect server of a command run from a bare shell, started before the work
instead of at the first API call.

Why: without ``PREFECT_API_URL`` Prefect starts a temporary server at a flow's first API call:
the command first imports Prefect and the flow's modules, then imports Prefect's whole server
application in its own process only to launch it, then waits for the server (a process that
imports that application again). On a two-core host that was 20-40 s of a bare-shell backup
before anything was backed up (issue #32). Started here, before anything heavy is imported,
the server starts on the other core while the command imports Prefect and its flow, and the
command never imports the server application itself.

It is the same server Prefect would start (``uvicorn`` running Prefect's ``create_app`` with
the settings Prefect gives its temporary server, the same ``PREFECT_HOME`` database), on a
loopback port, stopped when the command exits (after Prefect has flushed its logs to it). A
command that already has ``PREFECT_API_URL`` (a worker, an operator's own server) is left as it
is. :func:`is_temporary` tells the lock module that the API belongs to this command alone.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Marks, for this process and its children, that ``PREFECT_API_URL`` is this command's own
#: temporary server (whose leases and runs die with it), not a server configured by anyone.
TEMPORARY_API_ENV = "LETTA_OPS_TEMPORARY_PREFECT_API"
#: What Prefect gives its own temporary server: no UI, the ephemeral server's behaviour.
SERVER_SETTINGS = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
#: How long a stopping server may take before it is killed.
STOP_SECONDS = 5


class TemporaryServerFailed(RuntimeError):
    """The temporary Prefect server did not answer in time."""


@dataclass
class TemporaryPrefectServer:
    """A started temporary server: :meth:`wait_ready` before the first API call."""

    process: subprocess.Popen
    api_url: str
    timeout_seconds: float
    ready: bool = field(default=False)

    def wait_ready(self) -> None:
        """Block until the server answers its health check (at once when it already did)."""
        deadline = time.monotonic() + self.timeout_seconds
        while not self.ready:
            if self.process.poll() is not None:
                raise TemporaryServerFailed(
                    f"The temporary Prefect server exited (code {self.process.returncode}) "
                    "before it answered; set PREFECT_API_URL to a running Prefect server, or run "
                    "'prefect server start' once to see why it fails."
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    self.ready = answer.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if not self.ready:
                if time.monotonic() > deadline:
                    raise TemporaryServerFailed(
                        f"The temporary Prefect server did not answer within "
                        f"{self.timeout_seconds:g} s; raise "
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set "
                        "PREFECT_API_URL to a running Prefect server."
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server process this command started (by its handle), at most once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(server: TemporaryPrefectServer | None) -> None:
    """Before the first API call: wait for the server started here (if one was)."""
    if server is not None:
        server.wait_ready()


def is_temporary() -> bool:
    """Whether this command's Prefect API is a temporary server (its own, or Prefect's)."""
    api_url = os.environ.get("PREFECT_API_URL")
    return bool(api_url) and os.environ.get(TEMPORARY_API_ENV) == api_url


def start_if_needed() -> TemporaryPrefectServer | None:
    """Start the command's temporary Prefect server now, when no Prefect API is configured
    and Prefect would start one; None when one is configured (or Prefect's own start-up
    is asked for: ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE`` false, or a profile with an API).

    Call before Prefect is imported: Prefect reads ``PREFECT_API_URL`` once, at import.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    if not _ephemeral_mode_allowed() or _settings_files_may_set_api():
        return None
    port = _free_loopback_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # The app is found by module path inside the installed Prefect, without importing it.
    app_dir = _prefect_package_parent()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory"]
        + ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
        + ["--log-level", "error", "--lifespan", "on"],
        env={**os.environ, **SERVER_SETTINGS},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = TemporaryPrefectServer(
        process,
        api_url,
        float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 90),
    )
    # Registered before Prefect is imported: atexit runs it after Prefect's own exit handlers
    # (which flush the run's logs and events to this server).
    atexit.register(server.stop)
    os.environ["PREFECT_API_URL"] = api_url
    os.environ[TEMPORARY_API_ENV] = api_url
    return server


def _ephemeral_mode_allowed() -> bool:
    value = os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").strip().lower()
    return value not in ("0", "false", "no", "off")


def _settings_files_may_set_api() -> bool:
    """Whether a file Prefect reads its settings from may configure an API: the profiles
    file, or ``prefect.toml``, ``.env`` or ``pyproject.toml``'s ``[tool.prefect]`` in the
    working directory. Then Prefect decides, as before. A coarse look at the files, so that
    nothing is imported for it; a false alarm only costs the early start."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    if Path("prefect.toml").exists():
        return True
    for path, marker in (
        (profiles, "PREFECT_API_URL"),
        (Path(".env"), "PREFECT_API_URL"),
        (Path("pyproject.toml"), "[tool.prefect"),
    ):
        try:
            if marker in path.read_text():
                return True
        except OSError:
            continue
    return False


def _prefect_package_parent() -> Path:
    """The directory holding the installed ``prefect`` package (its spec, not an import)."""
    from importlib.util import find_spec

    spec = find_spec("prefect")
    if spec is None or spec.origin is None:
        raise TemporaryServerFailed("Prefect is not installed in this environment.")
    return Path(spec.origin).parent.parent


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
