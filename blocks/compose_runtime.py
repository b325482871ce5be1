"""Where and how a Letta server runs under Docker Compose, saved as a Prefect Block.

Why a block: an upgrade or rollback flow must know which compose file and which service to pin,
and which URL proves the new version is up, without an operator typing them on every run. The
block holds configuration only; the work is done by :mod:`tasks.letta_runtime_compose`, so the
same code runs with or without a saved block. Nothing here touches Docker at import time.
"""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from tasks import letta_runtime_compose as compose


class DockerComposeRuntime(Block):
    """Start, stop and pin a Letta server service defined in a Docker Compose file."""

    _block_type_name = "Letta Docker Compose Runtime"
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
    health_timeout_seconds: float = Field(
        default=180,
        description="How long to wait for the server to report the pinned version healthy.",
    )

    def pin(self, version: str) -> bool:
        """Pin the service's image to ``version``; True if the compose file changed."""
        return compose.pin_compose_file(self.compose_file, self.service, version)

    def start(self, version: str) -> dict:
        """Pin ``version``, ``up -d`` the service and wait until it is healthy at that version."""
        return compose.deploy_pinned_version(
            self.compose_file,
            self.service,
            version,
            self.base_url,
            self.health_timeout_seconds,
            project_name=self.project_name,
        )

    def stop(self) -> None:
        """Stop the service (its container and volumes stay)."""
        compose.compose_stop(self.compose_file, self.service, project_name=self.project_name)
