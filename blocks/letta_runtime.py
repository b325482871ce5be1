"""What every way of running a Letta server offers the flows that stop and start it.

Why one interface: operators run Letta under letta-ops' own process runtime, Docker Compose,
systemd, Kubernetes, a PaaS, or by hand. Upgrade, rollback, recover and restore ``--start`` must
read the same either way: stop, migrate, start a version and wait until ``/v1/health/`` reports
it, and put back whatever the runtime itself changed. The profile loads whichever runtime is
saved for the server (or configured in the environment); flows never ask which kind it is.

Migrations run from letta-ops' own pinned install of the target (``alembic upgrade head`` before
the start, so a failure shows before the new server runs), unless a runtime says the server's
start migrates by itself (Letta's Docker image does): then ``migrate`` only says so, and
``start`` waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field

from ..tasks.errors import Refused
from ..tasks.runtimes import install, process

if TYPE_CHECKING:
    from .letta_database import LettaDatabase


def quiet(_message: str) -> None:
    """The default log of runtime methods: nothing (stdout belongs to ``--json`` documents;
    flows pass their run logger, the CLI its progress printer)."""


class RuntimeRefused(Refused):
    """The runtime cannot drive this server as configured; the message says how to fix it."""


@dataclass(frozen=True)
class StartedServer:
    """A server a runtime started and saw healthy at ``version``."""

    version: str
    base_url: str
    pid: int | None = None


def health_status(kind: str, base_url: str) -> dict[str, Any]:
    """Status of a server no process of ours holds: whatever ``/v1/health/`` answers now."""
    from ..tasks.letta.health import probe_health

    health = probe_health(base_url)
    return {
        "kind": kind,
        "running": health is not None,
        "version": health.get("version") if health else None,
        "base_url": base_url,
    }


class LettaRuntime(Block):
    """Base of the runtime blocks: install settings and the migrations letta-ops runs."""

    model_config = ConfigDict(hide_input_in_errors=True)

    #: "process", "compose", "command" or "manual": for reports, never for flow decisions.
    kind: ClassVar[str] = "abstract"

    cache_dir: Path | None = Field(
        default=None,
        description="Where letta-ops caches its installs of Letta versions (it runs their "
        "alembic migrations); default ~/.cache/letta-ops.",
    )
    index_url: str = Field(
        default=install.DEFAULT_INDEX_URL,
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

    # ------------------------------------------------------------------ shared behaviour

    @property
    def migrates_on_start(self) -> bool:
        """Whether the server's own start runs ``alembic upgrade head`` (Letta's image)."""
        return False

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or install.default_cache_dir()

    def install(self, version: str, log=quiet) -> install.InstalledRuntime:
        return install.install_runtime(version, self.resolved_cache_dir(), self.index_url, log)

    def prepare(self, versions: list[str], log=quiet) -> None:
        """Install, before anything stops, what the run may need: the versions whose
        migrations letta-ops runs (all of them: a rollback's undo may migrate too)."""
        if not self.migrates_on_start:
            for version in versions:
                self.install(version, log)

    def migrate(self, version: str, database: LettaDatabase, log=quiet) -> None:
        """Run ``version``'s alembic migrations against ``database`` from letta-ops' own
        pinned install, unless the server's start migrates by itself."""
        if self.migrates_on_start:
            log(f"letta {version}: the server migrates its database when it starts")
            return
        process.migrate_database(
            version,
            database.letta_pg_uri(),
            self.resolved_cache_dir(),
            self.source_tree,
            self.index_url,
            log,
            extra_env=database.letta_server_env(),
        )

    def with_timeout(self, timeout: float | None) -> LettaRuntime:
        if timeout is None:
            return self
        return self.model_copy(update={"startup_timeout_seconds": timeout})

    def snapshot(self) -> dict[str, bytes]:
        """Files the runtime changes when it starts a version (a compose file's pin), by
        name: kept in each backup set so a rollback puts them back."""
        return {}

    def restore_snapshot(self, files: dict[str, bytes], log=quiet) -> None:
        """Put back what :meth:`snapshot` returned (nothing for most runtimes)."""

    def with_server_password(self, password: Any) -> LettaRuntime:
        """This runtime, knowing the password the server's profile uses (a server it starts
        must require it); runtimes that do not start the process themselves ignore it."""
        return self

    def configured_variables(self) -> set[str] | None:
        """Names of the variables letta-ops gives the server (None: not known here)."""
        return None

    def server_environment(self) -> dict[str, str] | None:
        """The running server's environment when it is a process on this host (doctor)."""
        return None

    def server_home(self) -> Path | None:
        """The server's HOME when letta-ops created it (doctor checks it is writable)."""
        return None

    # ------------------------------------------------------------------ per runtime

    # Each runtime also has ``base_url``: where its server answers.

    def describe(self) -> str:
        """One sentence: what letta-ops will drive, and how (doctor, dry-runs, plans)."""
        raise NotImplementedError

    def require_drivable(self) -> None:
        """Raise :class:`RuntimeRefused` when this runtime cannot stop and start the server
        (checked in pre-flight, before anything stops)."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """``{"running": bool, "kind": ..., ...}``: whether this runtime's server runs."""
        raise NotImplementedError

    def stop(self, log=quiet) -> Any:
        raise NotImplementedError

    def start(self, version: str, database: LettaDatabase, log=quiet) -> Any:
        """Start ``version`` on ``database``; return once ``/v1/health/`` reports it (an
        object with ``version``, ``base_url`` and ``pid``, which may be None)."""
        raise NotImplementedError
