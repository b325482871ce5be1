"""Install an exact Letta server version into its own virtual environment, from its sdist's
uv.lock, once per cache; the paths, types and redaction every runtime step shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from ..errors import Refused, final_error_line
from ..letta.versions import parse_server_version

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


#: The extras of Letta's own ``pyproject.toml`` every runtime installs: PostgreSQL drivers, the
#: server, and (for the versions that still serve it) SQLite's ``aiosqlite`` and ``sqlite-vec``.
RUNTIME_EXTRAS = ("postgres", "server", "sqlite")


def runtime_key(version: str) -> str:
    """The cache directory's name: the version *and* the install set. Runtimes are shared by
    everyone on the host and never rebuilt in place, so when the install set changes the key
    changes, and an install made with fewer extras is never taken for a complete one."""
    return f"letta-{version}-{'-'.join(RUNTIME_EXTRAS)}"


def runtime_root(cache_dir: Path, version: str) -> Path:
    return cache_dir / "runtimes" / runtime_key(version)


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
    with _file_lock(cache_dir / "locks" / f"{runtime_key(version)}.lock"):
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
                    "extras": list(RUNTIME_EXTRAS),
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
                *(arg for extra in RUNTIME_EXTRAS for arg in ("--extra", extra)),
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
                # Bytecode now, once: hosts and images set PYTHONDONTWRITEBYTECODE, and without
                # it every start of this server compiled Letta's modules from source again.
                "--compile-bytecode",
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
            "--compile-bytecode",
            "--python",
            str(venv / "bin" / "python"),
            f"letta[{','.join(RUNTIME_EXTRAS)}]=={version}",
            "psycopg[binary]",
        ]
        if cutoff:
            cmd += ["--exclude-newer", cutoff]
        _run(cmd, what=f"uv pip install of letta {version}", env=env)


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
