"""One destructive flow per Letta database at a time, with Prefect's own global concurrency,
and a holder anyone can name and, once it is provably dead, replace.

Why Prefect's and not a lock file: workers on several hosts may run flows for the same server;
only the Prefect server sees them all. ``strict`` matters: without it a missing limit is
silently skipped, which is no lock at all.

Why keyed by the database (host, port, name) and not the server's name: the name is derived
from a URL or chosen per block, so two names can point at one database; what a destructive run
must not share is the database.

Why a holder record, and why it comes first: a slot is a lease that its holder renews while it
lives (300 s). A holder killed outright leaves the slot counted, and Prefect cannot say by
whom; without ``PREFECT_API_URL`` each command runs on a temporary Prefect server whose leases
live in its memory, so after a ``kill -9`` the count stays in the local database with no lease
at all and never expires. So a run first *claims* a Prefect Variable ``letta-ops-lock-...``
(flow run, host, pid, since, a claim token), created only if absent, and only then takes the
slot, whose lease id it adds to its record. A counted slot of this limit therefore always has
a record naming a run that may be judged alive or dead: the record is written with the slot or
not at all.

Why compare-and-swap: a dead holder's record is replaced only by whoever first creates the
ticket variable ``letta-ops-lock-taken-TOKEN`` for that record's claim token (a create that
fails when the name exists). Only that winner gives back the dead holder's slot: by its lease
when the Prefect server still knows it, else (the lease went with a temporary server) exactly
one slot; never a reset of the count. A live run that finds a record it cannot prove dead is
refused or waits. Proof of death: its pid on this host is gone, its Prefect run is over, or a
journal (``recover``, ``unlock``) proves the run that wrote the record dead.

Releasing goes through the public client; taking and renewing use Prefect 3.8's private lease
functions (``prefect.concurrency._sync``, ``_leases``: the waiting on a busy limit and the
renewal thread), because the public ``concurrency()`` hides the lease id;
``tests/test_prefect_private_api.py`` pins them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    VariableCreate,
    VariableUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import Field

from ..errors import Busy
from . import temporary_server
from .context import TERMINAL_STATES, flow_run_state
from .journal import process_alive
from .report import FlowReport, StoredPart

if TYPE_CHECKING:
    from ..postgres.database import PostgresDatabase

#: How long a slot's lease lasts without renewal (Prefect's default); renewed while held.
LEASE_SECONDS = 300.0
#: Even a free slot takes the Prefect API a moment to grant; on a loaded two-core host more
#: than a second. A busy slot is refused at once when the caller does not want to wait.
ACQUIRE_GRACE_SECONDS = 30.0
#: How often a waiting run looks at the holder record again.
POLL_SECONDS = 1.0


class ServerBusy(Busy):
    """Another destructive flow holds this server's database."""


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


@dataclass(frozen=True)
class DeadRun:
    """A run a journal proves dead (``recover`` found it): its record may be replaced
    whatever the Prefect API behind it says."""

    run_id: str
    host: str
    pid: int
    why: str


# --------------------------------------------------------------------------- names


def lock_identity(server: str, database: PostgresDatabase | None = None) -> str:
    """What the slot is keyed by: the database's host (lowercase), port and name; the server
    name only for a caller that has no database."""
    if database is None:
        return f"server {server}"
    parts = database.parts
    return f"{str(parts['host']).lower()}:{parts['port']}/{parts['database']}"


def _slug(identity: str) -> str:
    """Lowercase letters, digits, ``-``, ``_`` (a Prefect Variable name), unique per identity."""
    readable = re.sub(r"[^a-z0-9_-]", "-", identity.lower())[:60]
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def lock_name(identity: str) -> str:
    return f"letta-ops-destructive-{_slug(identity)}"


def holder_variable(identity: str) -> str:
    return f"letta-ops-lock-{_slug(identity)}"


def ticket_variable(holder: dict[str, Any]) -> str:
    """The compare-and-swap ticket of one record: whoever creates it replaces that record."""
    token = holder.get("token") or holder.get("lease_id")
    if not token:  # a record without either: its own content names it
        token = hashlib.sha256(repr(sorted(holder.items())).encode()).hexdigest()[:32]
    return f"letta-ops-lock-taken-{re.sub(r'[^a-z0-9_-]', '-', str(token).lower())}"


# --------------------------------------------------------------------------- Prefect calls


def occupied_slots(identity: str) -> int:
    """Create the limit (one slot) if it does not exist yet; its occupied slots."""
    name = lock_name(identity)
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


def _read_variable(name: str) -> dict[str, Any] | None:
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(name)
    return variable.value if variable and isinstance(variable.value, dict) else None


def _create_variable(name: str, value: dict[str, Any]) -> bool:
    """Create ``name`` only if absent: the one atomic compare-and-swap Prefect offers."""
    with get_client(sync_client=True) as client:
        try:
            client.create_variable(VariableCreate(name=name, value=value))
            return True
        except ObjectAlreadyExists:
            return False


def _overwrite_variable(name: str, value: dict[str, Any]) -> None:
    with get_client(sync_client=True) as client:
        client.update_variable(VariableUpdate(name=name, value=value))


def _delete_variable(name: str) -> None:
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(name)


def read_holder(identity: str) -> dict[str, Any] | None:
    return _read_variable(holder_variable(identity))


def lease_known(lease_id: str) -> bool:
    """Whether the Prefect server still holds this lease (a renewal it accepts); a temporary
    server forgets its leases when it exits, a real one when they expire."""
    with get_client(sync_client=True) as client:
        try:
            client.renew_concurrency_lease(UUID(lease_id), lease_duration=60)
            return True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in (404, 410):
                return False
            raise


def temporary_prefect_server() -> bool:
    """No Prefect API is configured: this command runs on a temporary server of its own,
    whose leases die with it (another command's leases are never known to it)."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url or temporary_server.is_temporary()


def release_lease(lease_id: UUID) -> None:
    """Release a slot's lease through the public client API."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def _give_back_slot(identity: str, holder: dict[str, Any]) -> None:
    """Free the slot a dead ``holder`` took. Called only by the ticket's winner, while the
    record still names that holder: no other letta-ops run can hold a slot of this limit
    then (a run claims the record before it takes the slot), so a count is the holder's."""
    lease_id = holder.get("lease_id")
    if not lease_id and not temporary_prefect_server():
        # Killed between taking the slot and recording its lease: the Prefect server still
        # holds that lease and gives the slot back when it expires (<= LEASE_SECONDS);
        # giving it back now as well would free a later holder's slot then.
        return
    if lease_id and lease_known(lease_id):
        release_lease(UUID(lease_id))
        return
    if occupied_slots(identity):  # the lease is gone, the count stayed: exactly one slot
        _give_back_one(identity, holder.get("since"))


def _give_back_one(identity: str, since: str | None) -> None:
    """Decrement the count by one (never below zero), as the holder's release would have."""
    held = 1.0
    with contextlib.suppress(TypeError, ValueError):
        held = (datetime.now(UTC) - datetime.fromisoformat(str(since))).total_seconds()
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots([lock_name(identity)], 1, max(held, 1.0))


# --------------------------------------------------------------------------- the holder


def _current_run() -> tuple[str | None, str | None]:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            return str(ctx.flow_run.id), ctx.flow_run.name
    except Exception:  # noqa: BLE001 - outside a run
        pass
    return None, None


def _new_record(server: str, identity: str) -> dict[str, Any]:
    run_id, run_name = _current_run()
    return {
        "token": uuid.uuid4().hex,
        "server": server,
        "database": identity,
        "flow_run_id": run_id,
        "flow_run_name": run_name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "lease_id": None,
        "lease_expires_at": None,
    }


def holder_is_dead(holder: dict[str, Any], proven_dead: Iterable[DeadRun] = ()) -> str | None:
    """Why the recorded holder provably no longer runs, or None when it may still."""
    for dead in proven_dead:
        same_run = holder.get("flow_run_id") and dead.run_id[:36] == holder["flow_run_id"]
        same_process = (holder.get("host"), holder.get("pid")) == (dead.host, dead.pid)
        if same_run or same_process:
            return f"the journal of run {dead.run_id} proves it dead ({dead.why})"
    since = None
    with contextlib.suppress(TypeError, ValueError):
        since = datetime.fromisoformat(holder.get("since"))
    alive = process_alive(holder.get("host", ""), int(holder.get("pid") or 0), since=since)
    if alive is False:
        return f"pid {holder.get('pid')} on {holder.get('host')} is gone"
    state = flow_run_state(holder.get("flow_run_id"))
    if state in TERMINAL_STATES:
        return f"its Prefect run is {state.lower()}"
    return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that recorded no holder (not a letta-ops run, or a letta-ops older than 28)"
    lease = (
        f"its lease runs to {holder.get('lease_expires_at')} unless renewed"
        if holder.get("lease_id")
        else "taking the slot"
    )
    return (
        f"run {holder.get('flow_run_name') or holder.get('flow_run_id') or '?'} on "
        f"{holder.get('host')} (pid {holder.get('pid')}) since {holder.get('since')}; {lease}"
    )


def take_over(
    identity: str,
    holder: dict[str, Any],
    successor: dict[str, Any] | None,
    proven_dead: Iterable[DeadRun] = (),
    force: bool = False,
) -> str | None:
    """Replace the dead ``holder``'s record by ``successor`` (None: remove it), freeing its
    slot, if this caller wins the record's ticket; returns why it was dead, or None when the
    holder may live or another caller replaced it first.

    A winner killed before it replaced the record leaves a ticket naming itself: the chain
    is followed, so its own death is proven and its ticket taken in turn."""
    proven_dead = tuple(proven_dead)
    claimed = successor or _new_record(str(holder.get("server")), identity)
    current, first_why = holder, None
    for _ in range(8):
        why = "forced by the operator" if force else holder_is_dead(current, proven_dead)
        if why is None:
            return None
        first_why = first_why or why
        ticket = ticket_variable(current)
        won = _create_variable(ticket, claimed)
        if not won and (_read_variable(ticket) or {}).get("token") == claimed["token"]:
            won = True  # this caller won it a moment ago, before the record changed
        if won:
            if read_holder(identity) != holder:  # replaced meanwhile: not ours to touch
                return None
            _give_back_slot(identity, holder)
            if successor is None:
                _delete_variable(holder_variable(identity))
            else:
                _overwrite_variable(holder_variable(identity), successor)
            return first_why
        current = _read_variable(ticket)
        if current is None:
            return None
    return None


def _claim(
    server: str,
    identity: str,
    timeout_seconds: float | None,
    proven_dead: tuple[DeadRun, ...],
) -> dict[str, Any]:
    """Own the holder record: create it, or take it over from a dead holder; wait for a live
    one at most ``timeout_seconds`` (None: forever), then refuse naming it."""
    mine = _new_record(server, identity)
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        if _create_variable(holder_variable(identity), mine):
            return mine
        holder = read_holder(identity)
        if holder is None:
            continue  # released a moment ago
        if take_over(identity, holder, mine, proven_dead):
            return mine
        if deadline is not None and time.monotonic() >= deadline:
            raise _busy(server, holder)
        time.sleep(POLL_SECONDS)


def _release_record(identity: str, mine: dict[str, Any]) -> None:
    holder = read_holder(identity)
    if holder and holder.get("token") == mine["token"]:
        _delete_variable(holder_variable(identity))


def _busy(server: str, holder: dict[str, Any] | None) -> ServerBusy:
    return ServerBusy(
        f"Another destructive letta-ops flow holds server {server!r} (its database): "
        f"{describe_holder(holder)}. Wait for it (--wait SECONDS); if it is dead, "
        f"'letta-ops unlock --server {server}' frees the slot."
    )


# --------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def destructive_lock(
    server: str,
    timeout_seconds: float | None = 0,
    *,
    database: PostgresDatabase | None = None,
    proven_dead: Iterable[DeadRun] = (),
) -> Iterator[None]:
    """Hold the destructive slot of ``database`` (else of the server's name); wait at most
    ``timeout_seconds`` (None: forever) for a live holder. A dead holder's slot is taken at
    once; ``proven_dead`` are runs a journal proves dead (``recover``)."""
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    identity = lock_identity(server, database)
    mine = _claim(server, identity, timeout_seconds, tuple(proven_dead))
    try:
        occupied_slots(identity)  # creates the limit: strict refuses a missing one
        acquired = acquire_concurrency_slots_with_lease(
            [lock_name(identity)],
            1,
            timeout_seconds=ACQUIRE_GRACE_SECONDS,
            strict=True,
            lease_duration=LEASE_SECONDS,
        )
    except TimeoutError as exc:  # counted by no letta-ops run of this limit: not ours to free
        _release_record(identity, mine)
        raise _busy(server, None) from exc
    except BaseException:
        _release_record(identity, mine)
        raise
    lease_id = acquired.lease_id
    try:
        now = datetime.now(UTC)
        mine = {
            **mine,
            "lease_id": str(lease_id),
            "lease_expires_at": (now + timedelta(seconds=LEASE_SECONDS)).isoformat(
                timespec="seconds"
            ),
        }
        _overwrite_variable(holder_variable(identity), mine)
    except BaseException:  # the record and the slot go together, or not at all
        release_lease(lease_id)
        _release_record(identity, mine)
        raise
    try:
        with maintain_concurrency_lease(
            lease_id, LEASE_SECONDS, raise_on_lease_renewal_failure=True
        ):
            yield
    finally:
        try:
            release_lease(lease_id)
        finally:
            _release_record(identity, mine)


def journal_proofs(server: str) -> list[DeadRun]:
    """Runs of ``server`` whose journal began and never finished and whose process is gone."""
    from ..audit.store import AuditStore
    from .journal import unfinished_runs

    proofs = []
    for journal in unfinished_runs(AuditStore.from_env(), server):
        begin = journal[0]
        if process_alive(begin.host, begin.pid, since=begin.at) is False:
            why = f"its process (pid {begin.pid} on {begin.host}) is gone"
            proofs.append(DeadRun(begin.run_id, begin.host, begin.pid, why))
    return proofs


def unlock(
    server: str,
    force: bool = False,
    dry_run: bool = False,
    *,
    database: PostgresDatabase | None = None,
    proven_dead: Iterable[DeadRun] | None = None,
) -> UnlockReport:
    """Free the slot of a holder that is provably dead (or any holder with ``force``); the
    server's journal counts as proof (``proven_dead`` None: read it).

    With ``dry_run`` nothing is freed: ``would_free`` says whether it would be, and why.
    """
    identity = lock_identity(server, database)
    holder = read_holder(identity)
    slots = occupied_slots(identity)
    if holder is None and not slots:
        return UnlockReport(
            server=server,
            freed=False,
            reason="the slot is free",
            would_free=False if dry_run else None,
        )
    proofs = tuple(journal_proofs(server) if proven_dead is None else proven_dead)
    why = holder_is_dead(holder, proofs) if holder else None
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
    if holder is None:  # --force on a slot counted with no record: give back that one slot
        _give_back_one(identity, None)
        return UnlockReport(server=server, freed=True, reason="forced by the operator")
    taken = take_over(identity, holder, None, proofs, force=force and why is None)
    if taken is None:
        raise ServerBusy(
            f"Server {server!r}'s holder was replaced while unlock looked at it; nothing was "
            "freed: look again with 'letta-ops unlock --dry-run'."
        )
    return UnlockReport(server=server, freed=True, reason=taken, holder=holder)
