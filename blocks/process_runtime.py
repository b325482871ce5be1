"""How letta-ops runs a pinned Letta server as a local process (pip/uv installs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from ..tasks.letta.versions import parse_server_version
from ..tasks.runtimes import install
from ..tasks.runtimes import process as runtime
from ..tasks.sqlite.database import SqliteDatabase, require_serves_sqlite
from .block_docs import LOGO_URL, readme_section
from .letta_database import LettaDatabase
from .letta_runtime import LettaRuntime, RuntimeRefused, quiet


class LettaProcessRuntime(LettaRuntime):
    """Install, migrate, start and stop exact Letta versions as processes on this host.

    Server secrets (``OPENAI_API_KEY`` and the like) come from ``env_file`` and
    ``server_env``; they reach the server process's environment and nothing else.
    """

    kind: ClassVar[str] = "process"
    _block_type_name = "Letta Process Runtime"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Pinned Letta runtimes")
    _description = "Runs pinned Letta server versions installed from PyPI in isolated venvs."

    server_name: str = Field(
        default="default",
        description="Name of the server; selects the state directory (pid file, log, HOME).",
    )
    host: str = Field(default="127.0.0.1", description="Address the Letta server listens on.")
    port: int = Field(default=8283, ge=1, le=65535, description="Port the Letta server uses.")
    state_dir: Path | None = Field(
        default=None,
        description="Pid file, log and the server's HOME; default under the user data dir.",
    )
    env_file: Path | None = Field(
        default=None,
        description="The operator's dotenv file (e.g. the .env holding OPENAI_API_KEY), "
        "passed to the server process.",
    )
    server_env: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra environment variables for the server process (secret values).",
    )
    server_password: SecretStr | None = Field(
        default=None,
        description="The password the server requires (--secure); set from the server's "
        "profile (LETTA_API_KEY or the Letta Server block) when empty here.",
    )
    open_server: bool = Field(
        default=False,
        description="Declare on purpose that the server runs without authentication "
        "(LETTA_OPS_OPEN_SERVER=1); refused when a password is configured. Reports say it is "
        "open.",
    )

    @classmethod
    def from_env(cls, server_name: str = "default") -> LettaProcessRuntime:
        """Build from ``LETTA_OPS_*`` variables, with the port of ``LETTA_BASE_URL``."""
        from urllib.parse import urlparse

        base = urlparse(os.environ.get("LETTA_BASE_URL", "http://127.0.0.1:8283"))
        env_file = os.environ.get("LETTA_OPS_SERVER_ENV_FILE")
        return cls(
            server_name=server_name,
            host=base.hostname or "127.0.0.1",
            port=base.port or 8283,
            env_file=Path(env_file) if env_file else None,
            source_tree=os.environ.get("LETTA_OPS_SOURCE_TREE") or None,
            open_server=os.environ.get("LETTA_OPS_OPEN_SERVER", "").lower() in {"1", "true"},
        )

    @classmethod
    def scratch_of(
        cls, runtime: LettaRuntime, server_name: str, port: int, state_dir: Path
    ) -> LettaProcessRuntime:
        """A process runtime for a scratch copy of ``runtime``'s server on 127.0.0.1:``port``:
        the same installs, and (from a process runtime) the same server environment."""
        shared = {
            "cache_dir": runtime.cache_dir,
            "index_url": runtime.index_url,
            "source_tree": runtime.source_tree,
            "startup_timeout_seconds": runtime.startup_timeout_seconds,
        }
        if isinstance(runtime, LettaProcessRuntime):
            shared.update(env_file=runtime.env_file, server_env=runtime.server_env)
        return cls(
            server_name=server_name, host="127.0.0.1", port=port, state_dir=state_dir, **shared
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def resolved_state_dir(self) -> Path:
        return self.state_dir or install.default_state_dir(self.server_name)

    def start(
        self, version: str, database: LettaDatabase | SqliteDatabase, log=quiet
    ) -> install.ServerProcess:
        """Start ``version`` on a PostgreSQL database, or on a SQLite file (versions before
        0.12 only: the others are refused in one sentence before anything starts)."""
        on_sqlite = isinstance(database, SqliteDatabase)
        if on_sqlite:
            require_serves_sqlite(version)  # before anything is made on disk
        state = install.private_directory(self.resolved_state_dir())
        return runtime.start_server(
            str(parse_server_version(version)),
            None if on_sqlite else database.letta_pg_uri(),
            state,
            host=self.host,
            port=self.port,
            env_file=self.env_file,
            extra_env={
                **{k: v.get_secret_value() for k, v in self.server_env.items()},
                **({} if on_sqlite else database.letta_server_env()),
            },
            sqlite=database if on_sqlite else None,
            cache_dir=self.resolved_cache_dir(),
            index_url=self.index_url,
            timeout=self.startup_timeout_seconds,
            log=log,
            password=self.password_to_require(),
        )

    def password_to_require(self) -> str | None:
        """The password the started server must demand. ``open_server`` is refused when a
        password is configured: a server that has one is never started open by a variable."""
        explicit = self.server_env.get("LETTA_SERVER_PASSWORD")
        password = self.server_password or explicit
        if self.open_server and password is not None:
            raise RuntimeRefused(
                "LETTA_OPS_OPEN_SERVER (open_server) asks to start the server without "
                "authentication, but a password is configured for it; unset one of the two."
            )
        return password.get_secret_value() if password is not None else None

    def with_server_password(self, password: SecretStr | None) -> LettaProcessRuntime:
        if password is None or self.server_password is not None:
            return self
        return self.model_copy(update={"server_password": password})

    def stop(self, log=quiet) -> install.ServerProcess | None:
        return runtime.stop_server(self.resolved_state_dir())

    def status(self) -> dict:
        return runtime.process_status(self.resolved_state_dir())

    def configured_variables(self) -> set[str] | None:
        names = set(self.server_env)
        if self.env_file and self.env_file.exists():
            names |= set(runtime.read_env_file(self.env_file))
        return names

    def server_environment(self) -> dict[str, str] | None:
        from ..tasks.doctor.checks import server_process_environment

        return server_process_environment(self.resolved_state_dir())

    def server_home(self) -> Path | None:
        return self.resolved_state_dir() / "home"

    def describe(self) -> str:
        return (
            f"letta-ops' process runtime: Letta on {self.host}:{self.port}, pid file, log and "
            f"HOME in {self.resolved_state_dir()}; migrations run by letta-ops"
        )

    def require_drivable(self) -> None:
        """Only a server this runtime started (a live pid file) can be stopped by it; a server
        that is down is fine (it is started from here)."""
        if self.status().get("running"):
            return
        from ..tasks.letta.health import probe_health

        if probe_health(self.base_url) is not None:
            raise RuntimeRefused(
                f"The Letta server {self.base_url} answers but was not started by letta-ops' "
                f"process runtime (no live pid in {self.resolved_state_dir()}), so letta-ops "
                "cannot stop it: stop it and start it with 'letta-ops runtime start', or "
                "configure the runtime it runs under (LETTA_OPS_RUNTIME=compose|command|manual)."
            )
