"""``letta-ops metrics``: Prometheus text from the backup catalog and the audit store."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from letta_ops.cli.main import main
from letta_ops.tasks.audit.ops_metrics import collect, render
from letta_ops.tasks.audit.store import AuditRecord, AuditStore
from letta_ops.tasks.sets.retention import BackupSetSummary

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SAMPLE = re.compile(r'^[a-z_]+\{([a-z_]+="[^"]*",?)*\} -?[0-9.e+]+$')


def _set(server: str, hours_ago: float, verified: bool, complete: bool = True, size: int = 10):
    created = NOW - timedelta(hours=hours_ago)
    return BackupSetSummary(
        server=server,
        set_id=f"{created:%Y%m%dT%H%M%SZ}-x",
        prefix=f"{server}/x/",
        created_at=created if complete else None,
        complete=complete,
        verified=verified,
        pinned=False,
        purpose="scheduled",
        last_modified=created,
        size=size,
    )


def _record(operation: str, server: str, outcome: str, hours_ago: float, **kwargs):
    started = NOW - timedelta(hours=hours_ago)
    return AuditRecord(
        record_id=f"{operation}-{server}-{hours_ago}",
        operation=operation,
        server=server,
        outcome=outcome,
        started_at=started,
        ended_at=started + timedelta(minutes=2),
        **kwargs,
    )


def _value(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_backup_age_sizes_drills_and_downtimes() -> None:
    sets = [
        _set("prod", 30, verified=True, size=100),
        _set("prod", 5, verified=True, size=200),
        _set("prod", 1, verified=False, size=300),  # newest, not verified yet
        _set("prod", 0.5, verified=False, complete=False, size=7),
        _set("staging", 2, verified=False),
    ]
    records = [
        _record("verify", "prod", "failed", 3, parameters={"drill": True}),
        _record("verify", "prod", "succeeded", 10, parameters={"drill": True}),
        _record("verify", "prod", "succeeded", 1, parameters={"drill": False}),  # no drill
        _record("upgrade", "prod", "failed", 4),
        _record("upgrade", "prod", "succeeded", 20, versions_to="0.16.2").model_copy(
            update={"details": {"downtime_seconds": 42.5}}
        ),
        _record("backup", "prod", "running", 0.1),
    ]
    text = render(collect(sets, records, NOW))
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line
    assert _value(text, "letta_ops_backup_last_verified_age_seconds", server="prod") == 5 * 3600
    assert _value(text, "letta_ops_backup_last_verified_age_seconds", server="staging") is None
    assert _value(text, "letta_ops_backup_sets", server="prod", state="verified") == 2
    assert _value(text, "letta_ops_backup_sets", server="prod", state="incomplete") == 1
    assert _value(text, "letta_ops_backup_last_set_bytes", server="prod") == 300
    assert _value(text, "letta_ops_backup_bytes", server="prod") == 607
    assert _value(text, "letta_ops_drill_last_success", server="prod") == 0  # the newest failed
    assert _value(text, "letta_ops_upgrade_last_success", server="prod") == 0
    assert (
        _value(text, "letta_ops_upgrade_last_downtime_seconds", server="prod", to_version="0.16.2")
        == 42.5
    )
    assert _value(text, "letta_ops_runs", operation="backup", outcome="running") == 1
    assert text.count("# TYPE letta_ops_backup_sets gauge") == 1


def test_the_command_reads_the_real_stores(tmp_path, monkeypatch, capsys) -> None:
    audit = tmp_path / "audit.db"
    monkeypatch.setenv("LETTA_OPS_AUDIT_URL", f"sqlite:///{audit}")
    store = AuditStore(f"sqlite:///{audit}")
    store.save(_record("verify", "prod", "succeeded", 1, parameters={"drill": True}))
    (tmp_path / "sets").mkdir()
    output = tmp_path / "letta_ops.prom"
    assert main(["metrics", "--store", f"file://{tmp_path / 'sets'}", "--output", str(output)]) == 0
    text = output.read_text()
    assert _value(text, "letta_ops_drill_last_success", server="prod") == 1
    assert not list(tmp_path.glob(".*partial"))
    assert main(["metrics", "--store", f"file://{tmp_path / 'sets'}"]) == 0
    assert capsys.readouterr().out == text
