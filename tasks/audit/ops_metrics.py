"""``letta-ops metrics``: what an operator alerts on, as Prometheus text.

Why text and not an exporter: node-exporter's textfile collector already runs where operators
have Prometheus; a cron line ``letta-ops metrics > /var/lib/node_exporter/letta_ops.prom.$$ &&
mv ...`` is all it takes, with no port to open. Pure: it renders what the backup catalog (the
store's sets) and the audit store (drills, upgrades) say; the command line reads them.

Every sample carries a ``server`` label; a server with no verified set gets no age sample, so an
``absent()`` or ``> 26h`` alert fires for it either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..sets.retention import BackupSetSummary
from .store import AuditRecord

#: name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "letta_ops_backup_sets": ("gauge", "Backup sets in the store, by state."),
    "letta_ops_backup_bytes": ("gauge", "Bytes of every backup set of the server."),
    "letta_ops_backup_last_set_bytes": ("gauge", "Bytes of the newest complete backup set."),
    "letta_ops_backup_last_verified_timestamp_seconds": (
        "gauge",
        "Creation time of the newest verified backup set (Unix seconds).",
    ),
    "letta_ops_backup_last_verified_age_seconds": (
        "gauge",
        "Age of the newest verified backup set.",
    ),
    "letta_ops_drill_last_success": (
        "gauge",
        "1 if the newest finished restore drill passed, else 0.",
    ),
    "letta_ops_drill_last_timestamp_seconds": (
        "gauge",
        "When the newest finished restore drill ended (Unix seconds).",
    ),
    "letta_ops_upgrade_last_success": (
        "gauge",
        "1 if the newest finished upgrade succeeded, else 0.",
    ),
    "letta_ops_upgrade_last_downtime_seconds": (
        "gauge",
        "Downtime the newest successful upgrade measured (stopped to verified).",
    ),
    "letta_ops_runs": ("gauge", "Audited runs by operation and outcome."),
}


@dataclass
class Samples:
    """Samples by metric name, each (labels, value)."""

    by_name: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self.by_name.setdefault(name, []).append((labels, value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _finished(records: Iterable[AuditRecord], operation: str) -> list[AuditRecord]:
    return [r for r in records if r.operation == operation and r.outcome != "running"]


def collect(
    sets: Sequence[BackupSetSummary], records: Sequence[AuditRecord], now: datetime
) -> Samples:
    samples = Samples()
    servers = sorted({s.server for s in sets})
    for server in servers:
        own = [s for s in sets if s.server == server]
        complete = [s for s in own if s.complete]
        verified = [s for s in complete if s.verified]
        for state, count in (
            ("complete", len(complete)),
            ("incomplete", len(own) - len(complete)),
            ("verified", len(verified)),
        ):
            samples.add("letta_ops_backup_sets", {"server": server, "state": state}, count)
        samples.add("letta_ops_backup_bytes", {"server": server}, sum(s.size for s in own))
        if complete:
            newest = max(complete, key=lambda s: s.created_at or s.last_modified)
            samples.add("letta_ops_backup_last_set_bytes", {"server": server}, newest.size)
        if verified:
            created = max(s.created_at or s.last_modified for s in verified)
            samples.add(
                "letta_ops_backup_last_verified_timestamp_seconds",
                {"server": server},
                created.timestamp(),
            )
            samples.add(
                "letta_ops_backup_last_verified_age_seconds",
                {"server": server},
                max(0.0, (now - created).total_seconds()),
            )
    newest_first = sorted(records, key=lambda r: r.started_at, reverse=True)
    drills = [r for r in _finished(newest_first, "verify") if r.parameters.get("drill")]
    for server in sorted({r.server for r in drills}):
        last = next(r for r in drills if r.server == server)
        ok = last.outcome == "succeeded" and last.details.get("verified") is not False
        samples.add("letta_ops_drill_last_success", {"server": server}, 1.0 if ok else 0.0)
        ended = last.ended_at or last.started_at
        samples.add("letta_ops_drill_last_timestamp_seconds", {"server": server}, ended.timestamp())
    upgrades = _finished(newest_first, "upgrade")
    for server in sorted({r.server for r in upgrades}):
        last = next(r for r in upgrades if r.server == server)
        samples.add(
            "letta_ops_upgrade_last_success",
            {"server": server},
            1.0 if last.outcome == "succeeded" else 0.0,
        )
        timed = next(
            (
                r
                for r in upgrades
                if r.server == server
                and r.outcome == "succeeded"
                and r.details.get("downtime_seconds") is not None
            ),
            None,
        )
        if timed:
            samples.add(
                "letta_ops_upgrade_last_downtime_seconds",
                {"server": server, "to_version": timed.versions_to or ""},
                float(timed.details["downtime_seconds"]),
            )
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        counts[(r.operation, r.outcome)] = counts.get((r.operation, r.outcome), 0) + 1
    for (operation, outcome), count in sorted(counts.items()):
        samples.add("letta_ops_runs", {"operation": operation, "outcome": outcome}, count)
    return samples


def render(samples: Samples) -> str:
    """The Prometheus text exposition format (0.0.4): HELP, TYPE, then the samples."""
    lines: list[str] = []
    for name, (kind, text) in METRICS.items():
        rows = samples.by_name.get(name)
        if not rows:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in rows:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            number = repr(float(value)) if value != int(value) else str(int(value))
            lines.append(f"{name}{{{label_text}}} {number}")
    return "\n".join(lines) + "\n"
