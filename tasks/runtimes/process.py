"""Migrate, start and stop an exact Letta server version as a local process.

The install itself (an exact version's sdist, locked dependencies, a venv of its own) is
:mod:`letta_ops.tasks.runtimes.install`; this module runs what that installed.

Why this exists: a Letta server only runs reliably with the dependency set it was released
with (today's releases break old servers), its wheel has no alembic migrations, and the server
never migrates its own schema. So for each version we unpack its *sdist* (which carries
``alembic/`` and ``uv.lock``), install its locked dependencies into a venv of its own under the
user's cache directory, and run its migrations ourselves. Installs are reused across runs.

Everything here is a plain function (no Prefect: ``letta-ops runtime status`` reads the pid file
without loading it); the runtime blocks and flows call them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from ..letta.health import wait_for_health
from ..letta.versions import SDIST_WITH_MIGRATIONS
from ..sqlite.database import SqliteDatabase, require_serves_sqlite
from .alembic_tls import ALEMBIC_WITH_LIBPQ_TLS
from .install import (
    DEFAULT_INDEX_URL,
    InstalledRuntime,
    MigrationsUnavailable,
    ServerProcess,
    ServerStartError,
    _base_env,
    _download,
    _run,
    _tail,
    _unpack,
    _uri_secrets,
    default_cache_dir,
    install_runtime,
    private_directory,
    redact,
)

# --------------------------------------------------------------------------- migrate


def resolve_source_tree(source_tree: str, cache_dir: Path) -> Path:
    """A local Letta source tree, from a directory or an http(s) tarball URL."""
    if source_tree.startswith(("http://", "https://")):
        digest = hashlib.sha256(source_tree.encode()).hexdigest()[:16]
        dest = cache_dir / "sources" / digest
        if not (dest / ".complete").exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            archive = dest / "source.tar.gz"
            _download(source_tree, archive, None)
            top = _unpack(archive, dest / "tree")
            archive.unlink()
            (dest / ".complete").write_text(str(top))
        return Path((dest / ".complete").read_text())
    path = Path(source_tree).expanduser()
    if not (path / "alembic.ini").exists():
        raise MigrationsUnavailable(
            f"{path} is not a Letta source tree (no alembic.ini); point --source-tree at a "
            "checkout or tarball of the Letta server at the version you run."
        )
    return path


def migrations_dir(runtime: InstalledRuntime, source_tree: str | None, cache_dir: Path) -> Path:
    """Where to run ``alembic upgrade head`` for this runtime."""
    if source_tree:
        return resolve_source_tree(source_tree, cache_dir)
    if runtime.has_migrations:
        return runtime.source
    raise MigrationsUnavailable(
        f"letta {runtime.version}'s source distribution has no alembic migrations; pass "
        "--source-tree with a path or URL of the Letta source at that version, or use a "
        f"version that migrates offline ({', '.join(SDIST_WITH_MIGRATIONS)})."
    )


def migrate_database(
    version: str,
    letta_pg_uri: str,
    cache_dir: Path | None = None,
    source_tree: str | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    log: Callable[[str], None] = lambda _msg: None,
    extra_env: Mapping[str, str] | None = None,
) -> None:
    """Run ``version``'s alembic migrations (``upgrade head``) against the database.

    The URI reaches alembic through ``LETTA_PG_URI`` in its environment, never its arguments;
    ``extra_env`` carries the ``PGSSL*`` files (:mod:`letta_ops.tasks.runtimes.alembic_tls` makes
    0.14+'s pg8000 honour them).
    """
    cache_dir = cache_dir or default_cache_dir()
    runtime = install_runtime(version, cache_dir, index_url, log)
    where = migrations_dir(runtime, source_tree, cache_dir)
    env = _base_env(Path(tempfile.gettempdir()))
    env.update(extra_env or {})
    env["LETTA_PG_URI"] = letta_pg_uri
    log(f"letta {runtime.version}: alembic upgrade head")
    secrets = _uri_secrets(letta_pg_uri)
    output = _run(
        [str(runtime.venv / "bin" / "python"), "-c", ALEMBIC_WITH_LIBPQ_TLS, "upgrade", "head"],
        cwd=where,
        env=env,
        what=f"alembic upgrade head for letta {runtime.version}",
        secrets=secrets,
    )
    # Alembic logs each revision at INFO; what an operator must see are its warnings.
    for line in output.splitlines():
        if re.search(r"\b(WARNING|WARN|ERROR|Deprecat\w*)\b", line, re.IGNORECASE):
            log(f"letta {runtime.version} alembic: {line.strip()}")


# --------------------------------------------------------------------------- start / stop


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file (``KEY=value``, ``export KEY=value``, quotes, comments)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


#: Variables that would point a SQLite server at PostgreSQL (Letta reads each of them).
_POSTGRES_VARIABLES = (
    "LETTA_PG_URI",
    "LETTA_PG_DB",
    "LETTA_PG_USER",
    "LETTA_PG_PASSWORD",
    "LETTA_PG_HOST",
    "LETTA_PG_PORT",
)


def server_environment(
    letta_pg_uri: str | None,
    home: Path,
    env_file: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a Letta server process.

    On PostgreSQL ``LETTA_PG_URI`` is always explicit: without it 0.12+ connect to a default
    database while believing they run SQLite. On SQLite (``letta_pg_uri`` None) no PostgreSQL
    variable is set at all, not even one from the operator's env file: any of them switches
    Letta to PostgreSQL. The operator's env file and explicit variables (API keys) are passed
    through; ``HOME`` is the server's own, because it writes ``~/.letta`` (on SQLite: the
    directory whose ``.letta`` holds ``sqlite.db``).
    """
    env = _base_env(home)
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(extra or {})
    if letta_pg_uri is None:
        for variable in _POSTGRES_VARIABLES:
            env.pop(variable, None)
    else:
        env["LETTA_PG_URI"] = letta_pg_uri
    return env


def pid_file(state_dir: Path) -> Path:
    return state_dir / "letta-server.pid.json"


def log_file(state_dir: Path) -> Path:
    return state_dir / "letta-server.log"


def running_server(state_dir: Path) -> ServerProcess | None:
    """The server recorded in ``state_dir``'s pid file, if that very process still runs."""
    path = pid_file(state_dir)
    if not path.exists():
        return None
    try:
        record = ServerProcess(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if not _is_same_process(record):
        return None
    return record


def _is_same_process(record: ServerProcess) -> bool:
    """True only if the pid still belongs to the process we started (not a reused pid)."""
    try:
        proc = psutil.Process(record.pid)
        return abs(proc.create_time() - record.create_time) < 1.0 and proc.status() != "zombie"
    except psutil.Error:
        return False


def start_server(
    version: str,
    letta_pg_uri: str | None,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8283,
    env_file: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    timeout: float = 240.0,
    log: Callable[[str], None] = lambda _msg: None,
    password: str | None = None,
    sqlite: SqliteDatabase | None = None,
) -> ServerProcess:
    """Start ``letta server`` at exactly ``version`` and wait until it reports that version.

    With ``password`` the server runs ``--secure`` with the password in its environment
    (never in argv), and must refuse a request without credentials before this returns.
    With ``sqlite`` (and no ``letta_pg_uri``) it serves that SQLite file: its ``HOME`` is the
    directory holding the file's ``.letta``; a version that cannot is refused before anything
    is installed or started.
    """
    if (letta_pg_uri is None) == (sqlite is None):
        raise ValueError("start_server needs exactly one of letta_pg_uri and sqlite")
    if sqlite is not None:
        require_serves_sqlite(version)
    runtime = install_runtime(version, cache_dir, index_url, log)
    current = running_server(state_dir)
    if current is not None:
        raise ServerStartError(
            f"A Letta {current.version} server started by letta-ops already runs from "
            f"{state_dir} (pid {current.pid}, port {current.port}); stop it first."
        )
    # Only its owner may read what lands here: Letta writes LETTA_PG_URI, password
    # included, into $HOME/.letta/config, and the log may quote its environment.
    home = private_directory(state_dir / "home") if sqlite is None else sqlite_home(sqlite)
    private_directory(state_dir)
    env = server_environment(letta_pg_uri, home, env_file, extra_env)
    secure = ["--secure"] if password else []
    if password:
        env.update(LETTA_SERVER_PASSWORD=password, LETTA_SERVER_SECURE="true")
    logpath = log_file(state_dir)
    log(f"letta {runtime.version}: starting on {host}:{port} (log {logpath})")
    with logpath.open("ab") as out:
        out.write(
            f"\n=== letta-ops: starting letta {runtime.version} at "
            f"{datetime.now(UTC).isoformat()} ===\n".encode()
        )
        out.flush()
        proc = subprocess.Popen(
            [str(runtime.letta), "server", "--host", host, "--port", str(port), *secure],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = ServerProcess(
        pid=proc.pid,
        version=runtime.version,
        host=host,
        port=port,
        started_at=datetime.now(UTC).isoformat(),
        create_time=psutil.Process(proc.pid).create_time(),
        log_file=str(logpath),
        secured=bool(password),
    )
    pid_file(state_dir).write_text(json.dumps(asdict(record), indent=2))
    try:
        wait_for_health(
            record.base_url, runtime.version, timeout=timeout, is_alive=lambda: proc.poll() is None
        )
    except (TimeoutError, RuntimeError) as exc:
        _terminate(record, grace=10)
        pid_file(state_dir).unlink(missing_ok=True)
        secrets = tuple(env.values()) + (_uri_secrets(letta_pg_uri) if letta_pg_uri else ())
        tail = redact(_tail(logpath, 40), secrets)
        raise ServerStartError(
            f"letta {runtime.version} did not become healthy: {exc}\n"
            f"last lines of {logpath}:\n{tail}"
        ) from exc
    if password:
        refused = anonymous_request_refused(record.base_url)
        if not refused:
            _terminate(record, grace=10)
            pid_file(state_dir).unlink(missing_ok=True)
            raise ServerStartError(
                f"letta {runtime.version} started with --secure but answered GET /v1/agents/ "
                "without credentials; it was stopped. Check LETTA_SERVER_PASSWORD handling of "
                "this version."
            )
        log(f"letta {runtime.version}: healthy at {record.base_url}, password required")
    else:
        log(
            f"letta {runtime.version}: healthy at {record.base_url}, OPEN: it answers without "
            "credentials (set LETTA_API_KEY to start it secured)"
        )
    return record


def sqlite_home(sqlite: SqliteDatabase) -> Path:
    """The ``HOME`` of a server on ``sqlite``, its ``.letta`` directory made if missing (a new
    server creates its file there). The operator's own directories keep their modes; only a
    ``.letta`` made here is private, as Letta's config is."""
    if not sqlite.letta_dir.exists():
        private_directory(sqlite.letta_dir)
    return sqlite.server_home


def anonymous_request_refused(base_url: str) -> bool:
    """Whether ``GET /v1/agents/`` without credentials is refused (401/403): the proof that a
    server started secured really is."""
    response = httpx.get(f"{base_url}/v1/agents/", params={"limit": 1}, timeout=30)
    return response.status_code in (401, 403)


def stop_server(state_dir: Path, grace: float = 30.0) -> ServerProcess | None:
    """Stop the server recorded in ``state_dir`` (by its pid; nothing else is touched)."""
    record = running_server(state_dir)
    if record is None:
        pid_file(state_dir).unlink(missing_ok=True)
        return None
    _terminate(record, grace)
    pid_file(state_dir).unlink(missing_ok=True)
    return record


def _terminate(record: ServerProcess, grace: float) -> None:
    """SIGTERM the server's own process group (we started it in a new session), then SIGKILL."""
    if not _is_same_process(record):
        return
    try:
        pgid = os.getpgid(record.pid)
    except ProcessLookupError:
        return
    targets = [record.pid]
    with contextlib.suppress(psutil.Error):
        targets += [c.pid for c in psutil.Process(record.pid).children(recursive=True)]
    if pgid == record.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(_procs(targets), timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _procs(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


def server_status(state_dir: Path) -> dict:
    """Pid-file state and live health of the server recorded in ``state_dir``."""
    record = running_server(state_dir)
    if record is None:
        return {"running": False, "state_dir": str(state_dir)}
    status: dict = {"running": True, **asdict(record), "base_url": record.base_url}
    try:
        response = httpx.get(f"{record.base_url}/v1/health/", timeout=5)
        status["health"] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        status["health"] = {"status": "unreachable", "error": str(exc)}
    return status


def process_status(state_dir: Path) -> dict:
    """What ``runtime status`` reports for letta-ops' process runtime (the block's ``status``
    and the command line's path without blocks both answer with this)."""
    return {"kind": "process", **server_status(state_dir)}
