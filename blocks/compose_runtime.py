"""A Letta server run by Docker Compose, driven through letta-ops' runtime interface.

Why a block: an upgrade or rollback must know which compose file and which service to pin,
and which URL proves the new version is up, without an operator typing them on every run. The
work is done by :mod:`letta_ops.tasks.runtimes.compose` (the compose file is edited one line at a
time, comments kept); this block adds what the flows ask of every runtime: stop, start a
version and wait for it, status, and a copy of the compose file for each backup set so a
rollback puts back the operator's file as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from ..tasks.letta.versions import UnsupportedLettaVersion, parse_server_version
from ..tasks.runtimes import compose
from .block_docs import LOGO_URL, readme_section
from .letta_runtime import LettaRuntime, RuntimeRefused, StartedServer, quiet

if TYPE_CHECKING:
    from .letta_database import LettaDatabase


class DockerComposeRuntime(LettaRuntime):
    """Start, stop and pin a Letta server service defined in a Docker Compose file."""

    kind: ClassVar[str] = "compose"
    _block_type_name = "Letta Docker Compose Runtime"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Runtimes: what stops and starts the server")
    _description = (
        "A Letta server run by Docker Compose: letta-ops pins its image to an exact version, "
        "starts it and waits until it reports that version healthy."
    )

    compose_file: Path = Field(
        description="Path of the docker compose file that defines the Letta server service.",
    )
    service: str = Field(
        default="letta_server",
        description="Name of the Letta server service in the compose file.",
    )
    project_name: str | None = Field(
        default=None,
        description="Compose project name (docker compose -p); empty to use Compose's default.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8283",
        description="URL at which the started server answers; /v1/health/ is polled there.",
    )
    migrations: Literal["letta-ops", "image"] = Field(
        default="letta-ops",
        description="Who runs the target's alembic migrations: letta-ops, from its own pinned "
        "install, before 'up' (a failure shows before the container starts), or the image's "
        "entrypoint when the container starts.",
    )
    compose_env: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Variables the compose file interpolates (e.g. LETTA_PG_URI, "
        "OPENAI_API_KEY); passed to docker compose in its environment, never in argv.",
    )

    @classmethod
    def from_env(cls, server_name: str = "default") -> DockerComposeRuntime:
        """``LETTA_OPS_COMPOSE_FILE`` (and ``_SERVICE``, ``_PROJECT``, ``LETTA_OPS_MIGRATIONS``),
        with the server at ``LETTA_BASE_URL``."""
        return cls(
            compose_file=Path(os.environ["LETTA_OPS_COMPOSE_FILE"]),
            service=os.environ.get("LETTA_OPS_COMPOSE_SERVICE") or "letta_server",
            project_name=os.environ.get("LETTA_OPS_COMPOSE_PROJECT") or None,
            base_url=os.environ.get("LETTA_BASE_URL", "http://127.0.0.1:8283"),
            migrations=os.environ.get("LETTA_OPS_MIGRATIONS") or "letta-ops",
        )

    @property
    def migrates_on_start(self) -> bool:
        return self.migrations == "image"

    def _env(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.compose_env.items()}

    def _text(self) -> str:
        return Path(self.compose_file).read_text(encoding="utf-8")

    def pinned_tag(self) -> str | None:
        return compose.compose_image_tag(self._text(), self.service)

    def describe(self) -> str:
        who = "letta-ops before 'up'" if self.migrations == "letta-ops" else "the image at start"
        project = f" -p {self.project_name}" if self.project_name else ""
        return (
            f"Docker Compose: 'docker compose -f {self.compose_file}{project}' service "
            f"{self.service} (image pinned per version, health at {self.base_url}); "
            f"migrations by {who}"
        )

    def require_drivable(self) -> None:
        path = Path(self.compose_file)
        if not path.is_file():
            raise RuntimeRefused(
                f"The compose file {path} does not exist; set the runtime's compose_file "
                "(LETTA_OPS_COMPOSE_FILE) to the file that defines the Letta server."
            )
        tag = self.pinned_tag()  # ComposeFileError (Refused) names a missing service
        try:
            parse_server_version(tag or "")
        except UnsupportedLettaVersion:
            raise RuntimeRefused(
                f"{path} runs service {self.service} from image tag {tag or '(none)'!r}, which "
                "moves under the server (a 'docker compose pull' can cross a schema break); pin "
                f"it first: set 'image: letta/letta:X.Y.Z' to the version it runs now (see "
                "'letta-ops doctor'), run 'docker compose up -d', then upgrade."
            ) from None
        if shutil.which("docker") is None:
            raise RuntimeRefused(
                "'docker' was not found on PATH; install Docker with the compose plugin on the "
                "host that runs letta-ops for this server."
            )

    def status(self) -> dict[str, Any]:
        state = compose.compose_service_state(
            self.compose_file, self.service, project_name=self.project_name, env=self._env()
        )
        return {
            "kind": self.kind,
            "running": state["state"] == "running",
            "state": state["state"],
            "image": state["image"],
            "compose_file": str(self.compose_file),
            "service": self.service,
        }

    def stop(self, log=quiet) -> bool:
        """``docker compose stop SERVICE`` (its container and volumes stay); True if it ran."""
        was_running = self.status()["running"]
        log(f"docker compose stop {self.service}")
        compose.compose_stop(
            self.compose_file, self.service, project_name=self.project_name, env=self._env()
        )
        return was_running

    def start(
        self, version: str, database: LettaDatabase | None = None, log=quiet
    ) -> StartedServer:
        """Pin ``version``, ``up -d`` the service and wait until it is healthy at it."""
        log(f"docker compose: pin {self.service} to letta/letta:{version}, up -d")
        result = compose.deploy_pinned_version(
            self.compose_file,
            self.service,
            version,
            self.base_url,
            self.startup_timeout_seconds,
            project_name=self.project_name,
            env=self._env(),
        )
        log(f"letta {result['version']}: healthy at {self.base_url}")
        return StartedServer(result["version"], self.base_url)

    def pin(self, version: str) -> bool:
        """Pin the service's image to ``version``; True if the compose file changed."""
        return compose.pin_compose_file(self.compose_file, self.service, version)

    def snapshot(self) -> dict[str, bytes]:
        return {Path(self.compose_file).name: Path(self.compose_file).read_bytes()}

    def restore_snapshot(self, files: dict[str, bytes], log=quiet) -> None:
        data = files.get(Path(self.compose_file).name)
        if data is not None and data != Path(self.compose_file).read_bytes():
            log(f"put back {self.compose_file} as it was in the set")
            compose.replace_file_atomically(Path(self.compose_file), data)
