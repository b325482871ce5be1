"""The newest rehearsal of an upgrade, from the audit history: what plans quote.

Why the audit store: a rehearsal's measurements must outlive its run and be found by the next
``upgrade --dry-run`` on any host; every run is already recorded there, with its versions,
strategy and measured downtime.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .store import AuditStore


def latest_rehearsal(
    server: str, from_version: str, to_version: str, strategy: str
) -> dict[str, Any] | None:
    """The newest successful rehearsal of this server, version pair and strategy, or None."""
    try:
        records = AuditStore.from_env().query(
            server=server, operation="rehearse", outcome="succeeded", limit=50
        )
    except Exception:  # noqa: BLE001 - no history: plans fall back to the estimate
        return None
    for record in records:
        details = record.details or {}
        if (
            record.versions_from == from_version
            and record.versions_to == to_version
            and details.get("strategy") == strategy
            and details.get("downtime_seconds") is not None
        ):
            ended = record.ended_at or record.started_at
            return {
                "run": record.record_id,
                "at": ended.isoformat(),
                "age_hours": round((datetime.now(UTC) - ended).total_seconds() / 3600, 1),
                "downtime_seconds": details["downtime_seconds"],
                "downtime_steps": details.get("downtime_steps") or [],
                "source_set": record.backup_set,
            }
    return None


def rehearsal_is_current(
    rehearsal: dict[str, Any] | None, newest_backup_at: datetime | None
) -> bool:
    """A rehearsal counts when it exists and is not older than the newest backup (the data
    it rehearsed on is still what an upgrade would meet)."""
    if rehearsal is None:
        return False
    if newest_backup_at is None:
        return True
    return datetime.fromisoformat(rehearsal["at"]) >= newest_backup_at
