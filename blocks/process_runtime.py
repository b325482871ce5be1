"""How letta-ops runs a pinned Letta server as a local process (pip/uv installs)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from blocks.letta_database import LettaDatabase
from tasks import letta_runtime_process as runtime
from tasks.letta_versions import parse_server_version


class LettaProcessRuntime(Block):
    """Install, migrate, start and stop exact Letta versions as processes on this host.

    Server secrets (``OPENAI_API_KEY`` and the like) come from ``env_file`` and
    ``server_env``; they reach the server process's environment and nothing else.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Letta Process Runtime"
    _description = "Runs pinned Letta server versions installed from PyPI in isolated venvs."

    server_name: str = Field(
        default="default",
        description="Name of the server; selects the state directory (pid file, log, HOME).",
    )
    host: str = Field(default="127.0.0.1", description="Address the Letta server listens on.")
    port: int = Field(default=8283, ge=1, le=65535, description="Port the Letta server uses.")
    cache_dir: Path | None = Field(
        default=None,
        description="Where installed Letta versions are cached; default ~/.cache/letta-ops.",
    )
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
    index_url: str = Field(
        default=runtime.DEFAULT_INDEX_URL,
        description="Package index (simple API) to download Letta sdists from.",
    )
    source_tree: str | None = Field(
        default=None,
        description="Path or http(s) tarball URL of a Letta source tree, for versions whose "
        "sdist lacks alembic migrations (0.11.3, 0.12.1).",
    )
    startup_timeout_seconds: float = Field(
        default=240, description="How long to wait for /v1/health/ to report the version."
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
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or runtime.default_cache_dir()

    def resolved_state_dir(self) -> Path:
        return self.state_dir or runtime.default_state_dir(self.server_name)

    def install(self, version: str, log=print) -> runtime.InstalledRuntime:
        return runtime.install_runtime(version, self.resolved_cache_dir(), self.index_url, log)

    def migrate(self, version: str, database: LettaDatabase, log=print) -> None:
        runtime.migrate_database(
            version,
            database.letta_pg_uri(),
            self.resolved_cache_dir(),
            self.source_tree,
            self.index_url,
            log,
        )

    def start(self, version: str, database: LettaDatabase, log=print) -> runtime.ServerProcess:
        state = runtime.private_directory(self.resolved_state_dir())
        return runtime.start_server(
            str(parse_server_version(version)),
            database.letta_pg_uri(),
            state,
            host=self.host,
            port=self.port,
            env_file=self.env_file,
            extra_env={k: v.get_secret_value() for k, v in self.server_env.items()},
            cache_dir=self.resolved_cache_dir(),
            index_url=self.index_url,
            timeout=self.startup_timeout_seconds,
            log=log,
        )

    def stop(self) -> runtime.ServerProcess | None:
        return runtime.stop_server(self.resolved_state_dir())

    def status(self) -> dict:
        return runtime.server_status(self.resolved_state_dir())
