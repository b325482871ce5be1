"""Where a Letta server answers, and the password that opens it."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator


class LettaServer(Block):
    """A running Letta server's REST endpoint.

    The password is only sent when the server runs with ``--secure``; ``/v1/health/`` never
    needs it.
    """

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Letta Server"
    _description = "The REST endpoint of a self-hosted Letta server and its optional password."

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

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError(
                f"Letta base URL {value!r} is not an http(s) URL; use a form like "
                "http://127.0.0.1:8283."
            )
        return value.rstrip("/").removesuffix("/v1")

    @property
    def server_name(self) -> str:
        """The name used in backup paths: explicit, else ``host-port`` from the URL."""
        if self.name:
            return sanitize_server_name(self.name)
        parsed = urlparse(self.base_url)
        return sanitize_server_name(f"{parsed.hostname}-{parsed.port or parsed.scheme}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LettaServer:
        """Build from ``LETTA_BASE_URL``, ``LETTA_API_KEY`` and ``LETTA_OPS_SERVER_NAME``."""
        env = os.environ if environ is None else environ
        key = env.get("LETTA_API_KEY") or env.get("LETTA_SERVER_PASSWORD")
        return cls(
            name=env.get("LETTA_OPS_SERVER_NAME", ""),
            base_url=env.get("LETTA_BASE_URL", "http://127.0.0.1:8283"),
            password=SecretStr(key) if key else None,
        )

    def auth_headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        return {"Authorization": f"Bearer {self.password.get_secret_value()}"}


def sanitize_server_name(name: str) -> str:
    """A server name safe as one object-store path segment (no ``/``, no ``..``)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip())
    cleaned = cleaned.strip(".-") or "letta"
    return cleaned[:64]
