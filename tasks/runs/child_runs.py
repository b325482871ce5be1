"""Child runs of a fleet run: one per server, on work-pool workers or in this process.

Why deployment runs: a fleet spans hosts; only a worker on a host that can reach a server's
database should back it up. ``run_deployment`` puts each child on the deployment's work pool,
where any worker that can serve it picks it up; the parent only launches and watches. Without
a deployment (one host, ``letta-ops fleet-backup --local``) the children run here, one at a
time, as subflows.

What a child did is read from the audit store (the same record ``history`` shows), not from
Prefect results: results may live on another worker's disk, the audit store is shared.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from ..audit.store import AuditStore
from ..errors import Failed
from .report import ReportPart


class FleetRunFailed(Failed):
    """At least one server's child run failed (or a rollout stopped); the rest ran to the end."""


class ChildOutcome(ReportPart):
    """How one server's child run ended."""

    server: str = Field(description="The saved server's name (empty: the environment's).")
    flow_run_id: str | None = Field(description="The child's flow run id.")
    state: str = Field(description="The child run's final Prefect state type, or TIMED OUT.")
    ok: bool = Field(description="The child run completed.")
    error: str | None = Field(default=None, description="Why it failed (None: it did not).")
    seconds: float | None = Field(default=None, description="How long the child ran.")
    worker: str | None = Field(default=None, description="The worker that ran it (None: here).")
    backup_set: str | None = Field(
        default=None, description="SERVER/SET_ID of the set the child wrote, if any."
    )


def limit_name(kind: str, key: str) -> str:
    """A global concurrency limit's name for a store or a database host (Prefect names are
    letters, digits, ``-`` and ``_``)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")[:80] or "default"
    return f"letta-ops-fleet-{kind}-{slug}"


def ensure_limits(limits: dict[str, int]) -> None:
    """Create or resize the fleet's global concurrency limits (strict: children wait)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name, limit in limits.items():
            client.upsert_global_concurrency_limit_by_name(name, limit)


@contextlib.contextmanager
def fleet_slots(names: list[str] | None) -> Iterator[None]:
    """Hold one slot of each named global concurrency limit (strict: wait for them)."""
    if not names:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(names, occupy=1, strict=True):
        yield


def launch_deployment_run(deployment: str, server: str, parameters: dict[str, Any]) -> str:
    """Start ``deployment`` for ``server`` on its work pool; returns the child's run id."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        name=deployment,
        parameters={**parameters, "server": server or None},
        timeout=0,  # launch only; the parent watches all children together
        as_subflow=True,
        tags=[f"server:{server or 'env'}"],
    )
    return str(run.id)


def wait_for_runs(runs: dict[str, str], timeout: float, poll: float = 2.0) -> dict[str, Any]:
    """Poll the children until every one is in a final state (or the deadline passes)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    final: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while True:
            for server, run_id in runs.items():
                if server in final:
                    continue
                run = client.read_flow_run(UUID(run_id))
                if run.state is not None and run.state.is_final():
                    final[server] = run
            if len(final) == len(runs) or time.monotonic() > deadline:
                return final
            time.sleep(poll)


def outcome_from_run(server: str, run_id: str, run: Any | None) -> ChildOutcome:
    """The child's end, its error and worker from its audit record."""
    record = _audit_record(run_id)
    if run is None:
        return ChildOutcome(
            server=server,
            flow_run_id=run_id,
            state="TIMED OUT",
            ok=False,
            error="still running at the deadline",
        )
    state = run.state.type.value if run.state is not None else "UNKNOWN"
    ok = run.state is not None and run.state.is_completed()
    error = None if ok else (record.error if record else None) or (run.state.message or state)
    seconds = None
    if record is not None and record.ended_at is not None:
        seconds = round((record.ended_at - record.started_at).total_seconds(), 1)
    return ChildOutcome(
        server=server,
        flow_run_id=run_id,
        state=state,
        ok=ok,
        error=error,
        seconds=seconds,
        worker=(record.details or {}).get("worker") if record else None,
        backup_set=record.backup_set if record else None,
    )


def run_locally(server: str, child: Callable[..., Any], parameters: dict[str, Any]) -> ChildOutcome:
    """Run the child flow here as a subflow; its failure is recorded, never raised."""
    started = time.monotonic()
    state = child(**parameters, server=server or None, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    record = _audit_record(run_id) if run_id else None
    error = None
    if not state.is_completed():
        error = (record.error if record else None) or state.message
    return ChildOutcome(
        server=server,
        flow_run_id=run_id,
        state=state.type.value,
        ok=state.is_completed(),
        error=error,
        seconds=round(time.monotonic() - started, 1),
        backup_set=record.backup_set if record else None,
    )


def _audit_record(run_id: str | None):
    if not run_id:
        return None
    try:
        records = AuditStore.from_env().find(run_id)
    except Exception:  # noqa: BLE001 - the outcome is still known from Prefect
        return None
    return records[0] if records else None
