"""Install, migrate, start and stop an exact Letta server version as a local process.

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
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from letta_ops.tasks.errors import Refused, final_error_line
from letta_ops.tasks.letta.health import wait_for_health
from letta_ops.tasks.letta.versions import SDIST_WITH_MIGRATIONS, parse_server_version
from letta_ops.tasks.runtimes.alembic_tls import ALEMBIC_WITH_LIBPQ_TLS

DEFAULT_INDEX_URL = "https://pypi.org/simple"

#: Variables from our own environment a Letta server process may inherit. Everything else
#: (cloud credentials, our own database URIs) stays out of it.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class RuntimeInstallError(RuntimeError):
    """A Letta version could not be installed."""


class MigrationsUnavailable(Refused):
    """The version's sdist has no alembic migrations and no source tree was given."""


class ServerStartError(RuntimeError):
    """The Letta server did not become healthy."""


@dataclass(frozen=True)
class InstalledRuntime:
    """One installed Letta version: its venv and its unpacked source (for migrations)."""

    version: str
    root: Path
    venv: Path
    source: Path
    has_migrations: bool
    reused: bool

    @property
    def letta(self) -> Path:
        return self.venv / "bin" / "letta"

    @property
    def alembic(self) -> Path:
        return self.venv / "bin" / "alembic"


@dataclass(frozen=True)
class ServerProcess:
    """What the pid file records about a server we started."""

    pid: int
    version: str
    host: str
    port: int
    started_at: str
    create_time: float
    log_file: str
    #: Started with ``--secure`` and seen to refuse a request without credentials.
    secured: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def default_cache_dir() -> Path:
    """``~/.cache/letta-ops`` (or ``$XDG_CACHE_HOME``, or ``LETTA_OPS_CACHE_DIR``)."""
    if os.environ.get("LETTA_OPS_CACHE_DIR"):
        return Path(os.environ["LETTA_OPS_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("letta-ops"))


def default_state_dir(server_name: str) -> Path:
    """Per-server pid file, log and HOME, under the user's data directory."""
    if os.environ.get("LETTA_OPS_STATE_DIR"):
        return Path(os.environ["LETTA_OPS_STATE_DIR"]) / server_name
    import platformdirs

    return Path(platformdirs.user_data_dir("letta-ops")) / "servers" / server_name


def runtime_root(cache_dir: Path, version: str) -> Path:
    return cache_dir / "runtimes" / f"letta-{version}"


def uv_binary() -> str:
    """The ``uv`` executable shipped by the ``uv`` wheel, else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise RuntimeInstallError(
                "uv is not installed; install letta-ops with its dependencies (pip install uv)."
            ) from None
        return found


# --------------------------------------------------------------------------- install


def find_sdist(version: str, index_url: str = DEFAULT_INDEX_URL) -> dict:
    """The sdist file entry (url, sha256, upload-time) of ``letta==version`` on the index."""
    url = f"{index_url.rstrip('/')}/letta/"
    try:
        response = httpx.get(
            url,
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            timeout=60,
            follow_redirects=True,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise RuntimeInstallError(
            f"Could not read the package index at {url} ({exc}); check the network or the "
            "index URL."
        ) from exc
    name = f"letta-{version}.tar.gz"
    for entry in response.json().get("files", []):
        if entry.get("filename") == name:
            return entry
    raise RuntimeInstallError(
        f"letta {version} has no source distribution on {index_url}; pick a released server "
        "version such as 0.16.2."
    )


def _download(url: str, dest: Path, sha256: str | None) -> None:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=120, follow_redirects=True) as response:
        response.raise_for_status()
        with dest.open("wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    if sha256 and digest.hexdigest() != sha256:
        raise RuntimeInstallError(
            f"The download of {url} does not match the index's sha256; retry the install."
        )


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack an sdist or source tarball safely; return the single top-level directory."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    entries = [p for p in dest.iterdir() if p.is_dir()]
    return entries[0] if len(entries) == 1 else dest


def _run(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    what: str,
    secrets: tuple[str, ...] = (),
) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=dict(env) if env else None, capture_output=True, text=True
    )
    if result.returncode != 0:
        output = redact((result.stderr or result.stdout).strip(), secrets)
        # The sentence first (a Python tool's last line is its exception), the rest after.
        raise RuntimeInstallError(
            f"{what} failed (exit {result.returncode}): {final_error_line(output)}\n"
            f"{output[-3000:]}"
        )
    return redact(f"{result.stdout or ''}{result.stderr or ''}", secrets)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise installs of one version across processes (tests, CLI, workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def installed_runtime(version: str, cache_dir: Path | None = None) -> InstalledRuntime | None:
    """The cached install of ``version``, or None when it is not (completely) installed."""
    root = runtime_root(cache_dir or default_cache_dir(), version)
    marker = root / "installed.json"
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    return InstalledRuntime(
        version=version,
        root=root,
        venv=root / "venv",
        source=root / "src",
        has_migrations=bool(info.get("has_migrations")),
        reused=True,
    )


def install_runtime(
    version: str,
    cache_dir: Path | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    log: Callable[[str], None] = lambda _msg: None,
) -> InstalledRuntime:
    """Install ``letta==version`` with the dependencies locked in its own sdist; reuse a cache.

    The install is built in a temporary directory and moved into place, and ``installed.json``
    is written last, so an interrupted install is never mistaken for a complete one.
    """
    parsed = parse_server_version(version)
    version = str(parsed)
    cache_dir = cache_dir or default_cache_dir()
    with _file_lock(cache_dir / "locks" / f"letta-{version}.lock"):
        existing = installed_runtime(version, cache_dir)
        if existing and existing.letta.exists():
            log(f"letta {version}: reusing {existing.root}")
            return existing
        # Built in place; ``installed.json`` is written last, so a half-built directory
        # (interrupted install) has no marker and is rebuilt from scratch next time.
        root = runtime_root(cache_dir, version)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            _build_runtime(version, root, index_url, log)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        has_migrations = (root / "src" / "alembic.ini").exists()
        (root / "installed.json").write_text(
            json.dumps(
                {
                    "version": version,
                    "has_migrations": has_migrations,
                    "installed_at": datetime.now(UTC).isoformat(),
                    "python": sys.version.split()[0],
                },
                indent=2,
            )
        )
        log(f"letta {version}: installed in {root}")
        return InstalledRuntime(
            version=version,
            root=root,
            venv=root / "venv",
            source=root / "src",
            has_migrations=has_migrations,
            reused=False,
        )


def _build_runtime(version: str, work: Path, index_url: str, log: Callable[[str], None]) -> None:
    uv = uv_binary()
    entry = find_sdist(version, index_url)
    sdist = work / f"letta-{version}.tar.gz"
    log(f"letta {version}: downloading the sdist")
    _download(entry["url"], sdist, (entry.get("hashes") or {}).get("sha256"))
    unpacked = _unpack(sdist, work / "unpacked")
    os.rename(unpacked, work / "src")
    sdist.unlink()
    shutil.rmtree(work / "unpacked", ignore_errors=True)
    src = work / "src"
    venv = work / "venv"
    env = {**os.environ, "UV_INDEX_URL": index_url} if index_url != DEFAULT_INDEX_URL else None
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], what="uv venv", env=env)
    if (src / "uv.lock").exists():
        log(f"letta {version}: installing the dependencies locked in its uv.lock")
        requirements = work / "requirements.txt"
        _run(
            [
                uv,
                "export",
                "--frozen",
                "--no-dev",
                "--extra",
                "postgres",
                "--extra",
                "server",
                "--no-emit-project",
                "--no-hashes",
                "--quiet",
                "-o",
                str(requirements),
            ],
            cwd=src,
            what=f"uv export of letta {version}'s lock file",
            env=env,
        )
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv / "bin" / "python"),
                "-r",
                str(requirements),
                f"letta=={version}",
                "--no-deps",
                # 0.11.x's alembic env connects through psycopg 3, which its lock leaves out.
                "psycopg[binary]",
            ],
            what=f"uv pip install of letta {version}",
            env=env,
        )
    else:
        # No lock file (0.11.3, 0.12.1): resolve as of the release date, so that packages
        # released later (which break old servers) are not picked.
        cutoff = entry.get("upload-time", "")
        log(f"letta {version}: no uv.lock in the sdist; resolving as of {cutoff}")
        cmd = [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            f"letta[postgres,server]=={version}",
            "psycopg[binary]",
        ]
        if cutoff:
            cmd += ["--exclude-newer", cutoff]
        _run(cmd, what=f"uv pip install of letta {version}", env=env)


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


def server_environment(
    letta_pg_uri: str,
    home: Path,
    env_file: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a Letta server process.

    ``LETTA_PG_URI`` is always explicit: without it 0.12+ connect to a default database while
    believing they run SQLite. The operator's env file and explicit variables (API keys) are
    passed through; ``HOME`` is the server's own, because it writes ``~/.letta``.
    """
    env = _base_env(home)
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(extra or {})
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
    letta_pg_uri: str,
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
) -> ServerProcess:
    """Start ``letta server`` at exactly ``version`` and wait until it reports that version.

    With ``password`` the server runs ``--secure`` with the password in its environment
    (never in argv), and must refuse a request without credentials before this returns.
    """
    runtime = install_runtime(version, cache_dir, index_url, log)
    current = running_server(state_dir)
    if current is not None:
        raise ServerStartError(
            f"A Letta {current.version} server started by letta-ops already runs from "
            f"{state_dir} (pid {current.pid}, port {current.port}); stop it first."
        )
    # Only its owner may read what lands here: Letta writes LETTA_PG_URI, password
    # included, into $HOME/.letta/config, and the log may quote its environment.
    home = private_directory(state_dir / "home")
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
        tail = redact(_tail(logpath, 40), tuple(env.values()) + _uri_secrets(letta_pg_uri))
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


# --------------------------------------------------------------------------- helpers


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every secret value (of 4+ characters) in ``text`` with ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _uri_secrets(uri: str) -> tuple[str, ...]:
    from urllib.parse import quote, unquote, urlparse

    password = urlparse(uri).password or ""
    return (uri, password, unquote(password), quote(unquote(password), safe=""))


def private_directory(path: Path) -> Path:
    """Create ``path`` (and parents) and make it ``0700``: state directories and server
    HOMEs hold pid files, logs and Letta's config with the database password."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _base_env(home: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(home)
    return env


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
