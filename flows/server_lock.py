"""One destructive flow per Letta server at a time, with Prefect's own global concurrency.

Why Prefect's and not a lock file: workers on several hosts may run flows for the same server;
only the Prefect server sees them all. ``strict=True`` matters: without it a missing limit is
silently skipped, which is no lock at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency


class ServerBusy(RuntimeError):
    """Another destructive flow holds this server."""


def lock_name(server: str) -> str:
    return f"letta-ops-destructive-{server}"


def ensure_lock_limit(server: str) -> str:
    """Create the server's limit (one slot) if it does not exist yet."""
    name = lock_name(server)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except Exception:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
            )
    return name


@contextlib.contextmanager
def destructive_lock(server: str, timeout_seconds: float | None = 0) -> Iterator[None]:
    """Hold the server's destructive slot; wait at most ``timeout_seconds`` (None: forever)."""
    name = ensure_lock_limit(server)
    try:
        slot = concurrency(
            name,
            occupy=1,
            strict=True,
            timeout_seconds=max(timeout_seconds, 1) if timeout_seconds is not None else None,
        )
        slot.__enter__()
    except TimeoutError as exc:
        raise ServerBusy(
            f"Another destructive letta-ops flow is running on server {server!r}; wait for it "
            "to finish (see 'letta-ops history' or the Prefect UI) and try again."
        ) from exc
    try:
        yield
    finally:
        slot.__exit__(None, None, None)
