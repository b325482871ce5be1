"""The reports of backup, verify and prune: what the flows return and ``--json`` prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from letta_ops.cli.backups import render_backup, render_prune, render_verify
from letta_ops.cli.output import emit
from letta_ops.flows.backup import BackupReport
from letta_ops.flows.prune import PruneReport
from letta_ops.flows.verify import VerifyReport
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION

CHECKED_AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def verify_report(**overrides) -> VerifyReport:
    """As ``verify()`` builds it: the tasks' dicts validated into the report's parts."""
    fields = {
        "ok": True,
        "set": "prod/20261206T120000Z-abc",
        "drill": True,
        "checked_at": CHECKED_AT,
        "objects": 27,
        "read_data": False,
        "checked": {"by_store_checksum": 27, "read_back": 0, "bytes_read_back": 0},
        "problems": [],
        "dump": {"toc_entries": 410, "tables_with_data": 61, "tables_missing": [], "bytes_read": 9},
        "drill_result": {
            "scratch_database": "letta_drill_1",
            "in_place": False,
            "tables": 61,
            "differences": [{"table": "messages", "expected": 10, "actual": 9}],
            "restore_warnings": [],
        },
        "encryption": {
            "scheme": "letta-ops/aes-256-gcm-stream@1",
            "key_id": "k1",
            "decrypted": True,
        },
    }
    return VerifyReport(**{**fields, **overrides})


PHASES = [
    {"name": "start-up", "started_at": CHECKED_AT, "seconds": 0.4},
    {"name": "counts+dump+upload", "started_at": CHECKED_AT, "seconds": 12.25},
]


def backup_report(**overrides) -> BackupReport:
    return BackupReport(
        set="prod/20261206T120000Z-abc",
        server="prod",
        letta_version="0.16.2",
        alembic_revision="abc123",
        agents_total=3,
        agents_exported=2,
        agents_failed=[{"id": "agent-1", "name": "a/b", "error": "HTTP 500"}],
        tables=61,
        rows=1200,
        dump_bytes=4096,
        total_bytes=9000,
        verified=True,
        verification_problems=[],
        purpose="manual",
        pinned=False,
        encryption_key_id=None,
        object_lock={"mode": "GOVERNANCE", "days": 1.0, "retain_until": CHECKED_AT},
        **overrides,
    )


def test_verify_report_json_is_versioned_with_iso_times_and_the_documented_keys():
    document = json.loads(verify_report().model_dump_json())
    assert list(document)[0] == "schema_version" and document["schema_version"] == SCHEMA_VERSION
    assert datetime.fromisoformat(document["checked_at"]) == CHECKED_AT
    assert set(document) == {
        "schema_version", "ok", "set", "drill", "checked_at", "objects", "read_data",
        "checked", "problems", "dump", "sqlite_copy", "drill_result", "encryption", "phases",
    }  # fmt: skip
    assert document["drill_result"]["differences"] == [
        {"table": "messages", "expected": 10, "actual": 9}
    ]


def test_reports_refuse_unknown_keys_and_wrong_types():
    with pytest.raises(ValidationError, match="extra"):
        verify_report(okay=True)
    with pytest.raises(ValidationError, match="checked"):
        verify_report(checked={"by_store_checksum": 1})


def test_renderers_read_the_report_attributes():
    text = render_verify(verify_report())
    assert "verified 27 objects" in text and "drill matched 61 tables" in text
    assert "key id k1: decrypted and authenticated" in text
    text = render_backup(backup_report())
    assert "2 of 3 exported" in text and "failed     agent-1 'a/b': HTTP 500" in text
    assert "governance until 2026-12-06T12:00:00+00:00" in text


def test_backup_json_is_the_report_dump(capsys):
    emit(backup_report(), as_json=True, render=render_backup)
    document = json.loads(capsys.readouterr().out)
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["agents_failed"] == [{"id": "agent-1", "name": "a/b", "error": "HTTP 500"}]
    assert document["object_lock"]["retain_until"].startswith("2026-12-06T12:00:00")


def test_prune_rows_take_the_retention_rows_and_render_as_a_table():
    row = {
        "server": "prod",
        "set_id": "20261206T120000Z-abc",
        "created_at": CHECKED_AT.isoformat(),
        "action": "keep",
        "reasons": "last 7",
        "verified": True,
        "pinned": False,
        "size": 10,
        "lock_mode": None,
        "locked_until": None,
        "prunable_after": None,
    }
    report = PruneReport(
        executed=False,
        keep=1,
        held_by_lock=0,
        delete=0,
        deleted=[],
        sets=[row],
        policy={"keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
    )
    assert report.sets[0].created_at == CHECKED_AT
    text = render_prune(report)
    assert "20261206T120000Z-abc" in text and "plan (nothing deleted; add --execute)" in text


def test_phase_timings_reach_the_text_the_json_and_the_artifact():
    from letta_ops.flows.backup import render_backup_markdown
    from letta_ops.flows.verify import render_verify_markdown

    backup, verify = backup_report(phases=PHASES), verify_report(phases=PHASES)
    for text in (render_backup(backup), render_verify(verify)):
        assert text.splitlines()[-1] == "phases: start-up 0.4 s, counts+dump+upload 12.2 s"
    for markdown in (render_backup_markdown(backup), render_verify_markdown(verify)):
        assert "| counts+dump+upload | 2026-12-06T12:00:00+00:00 | 12.2 |" in markdown
    document = json.loads(backup.model_dump_json())
    assert document["phases"][1] == {
        "name": "counts+dump+upload",
        "started_at": "2026-12-06T12:00:00Z",
        "seconds": 12.25,
    }
    assert "phases" not in render_backup(backup_report())  # none timed: no line
