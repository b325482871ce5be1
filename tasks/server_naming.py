"""Which server a command means when no blocks are saved: its URL and its name.

Why a module of its own, free of Prefect: the name is part of every backup path and audit record,
so the saved block (:class:`letta_ops.blocks.letta_server.LettaServer`) and the read-only commands
that answer without loading Prefect (``backups list``, ``history``, ``runtime status``) must derive
it the same way -- from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlparse

from .errors import Refused

DEFAULT_BASE_URL = "http://127.0.0.1:8283"


class InvalidBaseURL(Refused):
    """The Letta server's URL is not an http(s) URL."""


def normalize_base_url(value: str) -> str:
    """``value`` without a trailing ``/`` or ``/v1``; refused unless it is an http(s) URL."""
    parsed = urlparse(value)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise InvalidBaseURL(
            f"Letta base URL {value!r} is not an http(s) URL; use a form like "
            "http://127.0.0.1:8283."
        )
    return value.rstrip("/").removesuffix("/v1")


def sanitize_server_name(name: str) -> str:
    """A server name safe as one object-store path segment (no ``/``, no ``..``)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip())
    cleaned = cleaned.strip(".-") or "letta"
    return cleaned[:64]


def server_name(name: str, base_url: str) -> str:
    """The name used in backup paths: ``name`` when given, else ``host-port`` from the URL."""
    if name:
        return sanitize_server_name(name)
    parsed = urlparse(base_url)
    return sanitize_server_name(f"{parsed.hostname}-{parsed.port or parsed.scheme}")


def server_name_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The name ``LETTA_OPS_SERVER_NAME`` and ``LETTA_BASE_URL`` give (what
    ``LettaServer.from_env().server_name`` is), refused when the URL is not http(s)."""
    env = os.environ if environ is None else environ
    base_url = normalize_base_url(env.get("LETTA_BASE_URL", DEFAULT_BASE_URL))
    return server_name(env.get("LETTA_OPS_SERVER_NAME", ""), base_url)
