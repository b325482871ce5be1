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
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


class ServerBusy(RuntimeError):
    """Another destructive flow holds this server."""


def lock_name(server: str) -> str:
    return f"letta-ops-destructive-{server}"


#: Even a free slot takes the Prefect API a moment to grant; on a loaded two-core host more
#: than a second. A busy slot is refused at once when the caller does not want to wait.
ACQUIRE_GRACE_SECONDS = 30.0


def occupied_slots(server: str) -> int:
    """Create the server's limit (one slot) if it does not exist yet; its occupied slots."""
    name = lock_name(server)
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
            )
            return 0
        except ObjectAlreadyExists:  # another run created it in the meantime
            return client.read_global_concurrency_limit_by_name(name).active_slots


@contextlib.contextmanager
def destructive_lock(server: str, timeout_seconds: float | None = 0) -> Iterator[None]:
    """Hold the server's destructive slot; wait at most ``timeout_seconds`` (None: forever).

    With ``timeout_seconds=0`` a slot another run holds is refused at once; a free one is
    still given the grace the API needs to grant it. Two runs that both see it free race in
    ``strict`` mode: one gets it, the other waits for it and is refused after the grace.
    """
    busy = ServerBusy(
        f"Another destructive letta-ops flow is running on server {server!r}; wait for it "
        "to finish (see 'letta-ops history' or the Prefect UI) and try again."
    )
    if occupied_slots(server) and timeout_seconds == 0:
        raise busy
    wait = None if timeout_seconds is None else max(timeout_seconds, ACQUIRE_GRACE_SECONDS)
    try:
        slot = concurrency(lock_name(server), occupy=1, strict=True, timeout_seconds=wait)
        slot.__enter__()
    except TimeoutError as exc:
        raise busy from exc
    try:
        yield
    finally:
        slot.__exit__(None, None, None)
