"""Where a Letta server answers, and the password that opens it, as the API client takes it."""

from __future__ import annotations

import os
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..server_naming import DEFAULT_BASE_URL, normalize_base_url
from ..server_naming import server_name as derive_server_name


class LettaEndpoint(BaseModel):
    """A running Letta server's REST endpoint.

    The password is only sent when the server runs with ``--secure``; ``/v1/health/`` never
    needs it. Why a plain model under the block: the API client takes this, so the drivers
    never import a Prefect block; :class:`letta_ops.blocks.letta_server.LettaServer` is the
    same fields saved as a block.
    """

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    name: str = Field(
        default="",
        description="Short name used in backup paths and the audit history; derived from the "
        "URL when empty.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8283",
        description="Base URL of the Letta server, e.g. http://127.0.0.1:8283 (no /v1 suffix).",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Server password (LETTA_API_KEY); sent as a Bearer token when set.",
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Inventory tags such as env:prod or team:search; fleet runs select "
        "servers by them (--servers 'env:prod').",
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return normalize_base_url(value)

    @property
    def server_name(self) -> str:
        """The name used in backup paths: explicit, else ``host-port`` from the URL."""
        return derive_server_name(self.name, self.base_url)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        """Build from ``LETTA_BASE_URL``, ``LETTA_API_KEY`` and ``LETTA_OPS_SERVER_NAME``."""
        env = os.environ if environ is None else environ
        key = env.get("LETTA_API_KEY") or env.get("LETTA_SERVER_PASSWORD")
        return cls(
            name=env.get("LETTA_OPS_SERVER_NAME", ""),
            base_url=env.get("LETTA_BASE_URL", DEFAULT_BASE_URL),
            password=SecretStr(key) if key else None,
        )

    def auth_headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        return {"Authorization": f"Bearer {self.password.get_secret_value()}"}
