"""One destructive flow per Letta server at a time, with Prefect's own global concurrency,
and a holder anyone can name.

Why Prefect's and not a lock file: workers on several hosts may run flows for the same server;
only the Prefect server sees them all. ``strict`` matters: without it a missing limit is
silently skipped, which is no lock at all.

Why a holder record: a slot is a lease that its holder renews while it lives (300 s). When the
holder is killed outright, the slot stays taken until the lease runs out, and Prefect cannot say
by whom. So whoever takes the slot also writes a Prefect Variable ``letta-ops-lock-SERVER``:
flow run, host, pid, since, lease id. A busy refusal names that holder and when its lease
expires; a holder whose Prefect run is over (crashed, cancelled, failed, completed) or whose
pid on this host is gone is reclaimed at once (its lease released by id), and
``letta-ops unlock`` does the same on demand. Releasing goes through the public client; taking
and renewing use Prefect 3.8's private lease functions (``prefect.concurrency._sync``,
``_leases``: the waiting on a busy limit and the renewal thread), because the public
``concurrency()`` hides the lease id; ``tests/test_prefect_private_api.py`` pins them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import Field

from letta_ops.flows.flow_report import FlowReport, StoredPart
from letta_ops.flows.run_context import TERMINAL_STATES, flow_run_state
from letta_ops.tasks.errors import Busy
from letta_ops.tasks.run_journal import process_alive

#: How long a slot's lease lasts without renewal (Prefect's default); renewed while held.
LEASE_SECONDS = 300.0
#: Even a free slot takes the Prefect API a moment to grant; on a loaded two-core host more
#: than a second. A busy slot is refused at once when the caller does not want to wait.
ACQUIRE_GRACE_SECONDS = 30.0


class ServerBusy(Busy):
    """Another destructive flow holds this server."""


class LockHolder(StoredPart):
    """Who took the slot, as it recorded itself (a record of an older letta-ops may lack
    any of it)."""

    flow_run_id: str | None = None
    flow_run_name: str | None = None
    host: str | None = None
    pid: int | None = None
    since: datetime | None = None
    lease_id: str | None = Field(None, description="The Prefect concurrency lease it holds.")
    lease_expires_at: datetime | None = Field(None, description="Unless renewed.")


class UnlockReport(FlowReport):
    """``unlock()``'s result and ``letta-ops unlock --json``."""

    server: str
    freed: bool = Field(description="The slot was freed by this call.")
    reason: str = Field(description="Why freed, or why not.")
    would_free: bool | None = Field(None, description="--dry-run only: it would be freed.")
    holder: LockHolder | None = Field(None, description="The holder (None: none recorded).")


def lock_name(server: str) -> str:
    return f"letta-ops-destructive-{server}"


def holder_variable(server: str) -> str:
    """A Prefect Variable name (lowercase letters, digits, ``-``, ``_``) unique per server."""
    slug = re.sub(r"[^a-z0-9_-]", "-", server.lower())[:60]
    digest = hashlib.sha256(server.encode()).hexdigest()[:8]
    return f"letta-ops-lock-{slug}-{digest}"


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


# --------------------------------------------------------------------------- the holder


def read_holder(server: str) -> dict[str, Any] | None:
    from prefect.variables import Variable

    value = Variable.get(holder_variable(server), default=None)
    return value if isinstance(value, dict) else None


def _write_holder(server: str, holder: dict[str, Any] | None) -> None:
    from prefect.variables import Variable

    if holder is None:
        Variable.unset(holder_variable(server))
    else:
        Variable.set(holder_variable(server), holder, overwrite=True)


def _current_run() -> tuple[str | None, str | None]:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            return str(ctx.flow_run.id), ctx.flow_run.name
    except Exception:  # noqa: BLE001 - outside a run
        pass
    return None, None


def holder_is_dead(holder: dict[str, Any]) -> str | None:
    """Why the recorded holder provably no longer runs, or None when it may still."""
    alive = process_alive(holder.get("host", ""), int(holder.get("pid", 0)))
    if alive is False:
        return f"pid {holder.get('pid')} on {holder.get('host')} is gone"
    state = flow_run_state(holder.get("flow_run_id"))
    if state in TERMINAL_STATES:
        return f"its Prefect run is {state.lower()}"
    return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that recorded no holder (an older letta-ops, or one killed as it began)"
    expires = holder.get("lease_expires_at", "?")
    return (
        f"run {holder.get('flow_run_name') or holder.get('flow_run_id') or '?'} on "
        f"{holder.get('host')} (pid {holder.get('pid')}) since {holder.get('since')}; "
        f"its lease runs to {expires} unless renewed"
    )


def release_lease(lease_id: UUID) -> None:
    """Release a slot's lease through the public client API."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def release_slot(server: str, holder: dict[str, Any] | None) -> None:
    """Free the slot ``holder`` took: release its lease by id, else (a lease lost with a
    temporary Prefect server leaves the slot counted with no lease) reset the limit, but only
    while the holder record still names that dead holder: a run that reclaimed the slot a
    moment ago has written its own record by then, and its slot is left alone."""
    if holder and holder.get("lease_id"):
        try:
            release_lease(UUID(holder["lease_id"]))
            if read_holder(server) == holder:
                _write_holder(server, None)
            return
        except Exception:  # noqa: BLE001 - the lease is gone; the count may remain
            pass
    if read_holder(server) != holder or not occupied_slots(server):
        return
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            lock_name(server), GlobalConcurrencyLimitUpdate(active_slots=0)
        )
    _write_holder(server, None)


def reclaim_if_dead(server: str) -> str | None:
    """Free the slot when its holder is provably dead; returns why, or None if not freed."""
    if not occupied_slots(server):
        return None
    holder = read_holder(server)
    why = holder_is_dead(holder) if holder else None
    if why is None:
        return None
    release_slot(server, holder)
    return why


# --------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def destructive_lock(server: str, timeout_seconds: float | None = 0) -> Iterator[None]:
    """Hold the server's destructive slot; wait at most ``timeout_seconds`` (None: forever).

    A slot held by a dead holder is reclaimed first. With ``timeout_seconds=0`` a slot a
    live run holds is refused at once, naming it; a free one is still given the grace the API
    needs to grant it. Two runs that both see it free race in ``strict`` mode: one gets it,
    the other waits for it and is refused after the grace.
    """
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    reclaim_if_dead(server)

    def busy() -> ServerBusy:
        return ServerBusy(
            f"Another destructive letta-ops flow holds server {server!r}: "
            f"{describe_holder(read_holder(server))}. Wait for it (--wait SECONDS); if it "
            f"is dead, 'letta-ops unlock --server {server}' frees the slot."
        )

    if occupied_slots(server) and timeout_seconds == 0:
        raise busy()
    wait = None if timeout_seconds is None else max(timeout_seconds, ACQUIRE_GRACE_SECONDS)
    try:
        acquired = acquire_concurrency_slots_with_lease(
            [lock_name(server)],
            1,
            timeout_seconds=wait,
            strict=True,
            lease_duration=LEASE_SECONDS,
        )
    except TimeoutError as exc:
        raise busy() from exc
    lease_id = acquired.lease_id
    run_id, run_name = _current_run()
    now = datetime.now(UTC)
    _write_holder(
        server,
        {
            "flow_run_id": run_id,
            "flow_run_name": run_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": now.isoformat(timespec="seconds"),
            "lease_id": str(lease_id),
            "lease_expires_at": (now + timedelta(seconds=LEASE_SECONDS)).isoformat(
                timespec="seconds"
            ),
        },
    )
    try:
        with maintain_concurrency_lease(
            lease_id, LEASE_SECONDS, raise_on_lease_renewal_failure=True
        ):
            yield
    finally:
        try:
            holder = read_holder(server)
            if holder and holder.get("lease_id") == str(lease_id):
                _write_holder(server, None)
        finally:
            release_lease(lease_id)


def unlock(server: str, force: bool = False, dry_run: bool = False) -> UnlockReport:
    """Free the slot of a holder that is provably dead (or any holder with ``force``).

    With ``dry_run`` nothing is freed: ``would_free`` says whether it would be, and why.
    """
    if not occupied_slots(server):
        if read_holder(server) and not dry_run:
            _write_holder(server, None)  # a stale record of a slot already freed
        return UnlockReport(
            server=server,
            freed=False,
            reason="the slot is free",
            would_free=False if dry_run else None,
        )
    holder = read_holder(server)
    why = holder_is_dead(holder) if holder else None
    if dry_run:
        would = why is not None or force
        reason = why or ("forced by the operator" if force else None)
        return UnlockReport(
            server=server,
            freed=False,
            would_free=would,
            reason=reason
            or f"held by {describe_holder(holder)}, which may still run (--force frees it)",
            holder=holder,
        )
    if why is None and not force:
        raise ServerBusy(
            f"Server {server!r} is held by {describe_holder(holder)}, which may still run; "
            "nothing was freed (wait for it, or pass --force if you know it is dead)."
        )
    release_slot(server, holder)
    return UnlockReport(
        server=server, freed=True, reason=why or "forced by the operator", holder=holder
    )
