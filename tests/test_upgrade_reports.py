"""The reports of upgrade, rehearse, rollback, restore, recover and unlock: built from the
dicts their steps return, dumped as ``--json`` prints them, closed to unknown keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from letta_ops.cli.output import to_json
from letta_ops.flows.recover import RecoverReport, render_recover_markdown
from letta_ops.flows.rehearse import RehearsalReport, render_rehearsal_markdown
from letta_ops.flows.reports.rollback import RollbackReport, render_rollback_markdown
from letta_ops.flows.reports.upgrade import UpgradeReport, render_upgrade_markdown
from letta_ops.flows.restore import RestoreReport, render_restore_markdown
from letta_ops.tasks.runs.lock import UnlockReport
from letta_ops.tasks.runs.recovery_plan import RecoveryPlan
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION

SET = "prod/20261123T021500Z-aaaa1111"
SAFETY = "prod/20261124T021500Z-bbbb2222"

UPGRADE_PLAN = {
    "server": "prod",
    "base_url": "http://127.0.0.1:8283",
    "from_version": "0.11.7",
    "to_version": "0.16.2",
    "strategy": "rebuild",
    "runtime": "letta-ops' process runtime: Letta on 127.0.0.1:8283",
    "pg_tools": "PostgreSQL client tools in /usr/lib/postgresql/18/bin",
    "alembic_revision": "ddb69be34a72",
    "reset_mode": "recreate",
    "left_alone": [],
    "database_role": "letta",
    "postgres_major": 18,
    "agents": 16,
    "database_bytes": 12_345_678,
    "free_bytes": 98_765_432_100,
    "name_rule": "ascii",
    "renames": {"agent-4": {"old": "AI/ML Expert", "new": "AI-ML Expert"}},
    "transit_renames": {
        "agent-4": {"old": "AI/ML Expert", "new": "AI-ML Expert"},
        "agent-5": {"old": "Café Ñandú", "new": "Cafe Nandu"},
    },
    "steps": ["backup (verified, pinned)", "rename agents the versions refuse", "stop server"],
    "rehearsal": {
        "run": "run-7",
        "at": "2026-11-23T03:00:00+00:00",
        "age_hours": 1.5,
        "downtime_seconds": 61.2,
        "downtime_steps": [{"step": "stop server", "seconds": 1.1}],
        "source_set": SET,
    },
    "expected_downtime_seconds": 61.2,
    "expected_downtime_source": "measured by the rehearsal at 2026-11-23T03:00:00+00:00 "
    "(1.5 h ago)",
    "lossy": True,
}

SEQUENCES = {
    "schema": "public",
    "dry_run": False,
    "changes": [
        {
            "action": "setval",
            "sequence": "public.message_seq_id_seq",
            "table": "messages",
            "column": "sequence_id",
            "from": 1,
            "to": 43,
        }
    ],
    "checked": [
        {
            "table": "messages",
            "column": "sequence_id",
            "sequence": "public.message_seq_id_seq",
            "source": "owned",
            "max": 42,
            "next_value": 1,
            "ok": False,
        }
    ],
}

VERIFICATION_ROW = {
    "agent": "agent-4",
    "name_before": "AI/ML Expert",
    "name_after": "AI-ML Expert",
    "messages_before": 7,
    "messages_after": 5,
    "blocks_before": 2,
    "blocks_after": 2,
}

ROLLBACK_PLAN = {
    "server": "prod",
    "base_url": "http://127.0.0.1:8283",
    "runtime": "letta-ops' process runtime: Letta on 127.0.0.1:8283",
    "pg_tools": "PostgreSQL client tools in /usr/lib/postgresql/18/bin",
    "set": SET,
    "set_created_at": datetime(2026, 11, 23, 2, 15, tzinfo=UTC),
    "set_purpose": "pre-upgrade",
    "from_version": "0.16.2",
    "server_down": False,
    "to_version": "0.11.7",
    "agents_now": 5,
    "agents_in_set": 4,
    "agents_not_in_set": ["added"],
    "agents_coming_back": [],
    "written_since_set": {"messages": 12, "agents": 1, "blocks": 3, "passages": 0},
    "agents_created_since_set": ["added"],
    "tables": 40,
    "rows": 900,
    "database_bytes": 12_345_678,
    "objects_verified": 6,
    "reset_mode": "in-place",
    "left_alone": ["table public.app_notes", "schema auth (3 objects)"],
    "database_role": "letta_owner",
    "postgres_major": 16,
    "steps": ["safety backup", "stop server", "start Letta 0.11.7"],
    "expected_downtime_seconds": 75,
    "runtime_file_changes": {"docker-compose.yml": ["-    image: letta/letta:0.16.2"]},
}

RESTORE_PLAN = {
    "set": SET,
    "set_created_at": datetime(2026, 11, 23, 2, 15, tzinfo=UTC),
    "letta_version": "0.11.7",
    "target": "postgresql://letta:***@127.0.0.1:5432/staging",
    "target_tables_before": 0,
    "replaces_existing": False,
    "reset_mode": "recreate",
    "left_alone": [],
    "objects_verified": 6,
    "tables": 40,
    "rows": 900,
    "agents_in_set": 4,
    "start": True,
    "base_url": "http://127.0.0.1:8300",
    "server_name": "127.0.0.1-8300",
    "engine": "postgresql",
}

PROOF = {
    "ok": True,
    "version": "0.11.7",
    "agents": 4,
    "agents_equal": True,
    "agents_missing": [],
    "agents_unexpected": [],
    "count_differences": [],
}


def _json(report) -> dict:
    """What ``--json`` prints for ``report``."""
    return json.loads(to_json(report, versioned=True))


def _rejects_unknown_keys(model, fields: dict) -> None:
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**fields, "no_such_key": 1})


def test_upgrade_plan_and_report():
    planned = UpgradeReport(plan=UPGRADE_PLAN, dry_run=True, outcome="planned")
    planned.plan.rehearsal_current = True
    document = _json(planned)
    assert document["schema_version"] == SCHEMA_VERSION
    assert set(UPGRADE_PLAN) | {"rehearsal_current"} == set(document["plan"])
    assert document["plan"]["renames"] == UPGRADE_PLAN["renames"]
    assert document["plan"]["rehearsal"]["at"] == "2026-11-23T03:00:00Z"
    assert document["plan"]["expected_downtime_seconds"] == 61.2
    # A rebuild's steps carry the transit names; the agents end with the final ones.
    assert planned.plan.rename_map() == UPGRADE_PLAN["transit_renames"]
    assert planned.plan.final_map() == UPGRADE_PLAN["renames"]

    # As the flow fills it in: assignments are validated into the sub-models.
    report = UpgradeReport(plan=UPGRADE_PLAN, dry_run=False, outcome="planned")
    report.backup_set = SET
    report.started_at = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    report.downtime_seconds = 88.4
    report.sequences = SEQUENCES
    report.agents_after = 16
    report.verification = [VERIFICATION_ROW]
    report.not_carried = {"messages": 2, "archival_passages": 0, "note": "agent files carry"}
    report.outcome = "succeeded"
    report.finished_at = datetime(2026, 11, 23, 4, 2, tzinfo=UTC)
    assert report.verification[0].messages_after == 5 and report.not_carried.messages == 2
    assert report.sequences.schema_ == "public"
    document = _json(report)
    assert {
        "schema_version",
        "plan",
        "dry_run",
        "outcome",
        "backup_set",
        "started_at",
        "downtime_seconds",
        "sequences",
        "agents_after",
        "verification",
        "not_carried",
        "finished_at",
    } <= set(document)
    assert document["sequences"] == SEQUENCES  # "schema" and "from" as the repair wrote them
    assert document["verification"] == [VERIFICATION_ROW]
    assert document["finished_at"] == "2026-11-23T04:02:00Z"
    markdown = render_upgrade_markdown(report)
    assert "0.11.7 -> 0.16.2 (rebuild): **succeeded**" in markdown
    assert "- renamed `agent-4`: 'AI/ML Expert' -> 'AI-ML Expert'" in markdown
    assert "- not carried by agent files: 2 messages, 0 archival passages" in markdown

    with pytest.raises(ValidationError):
        report.no_such_key = 1
    _rejects_unknown_keys(UpgradeReport, {"plan": UPGRADE_PLAN, "dry_run": True, "outcome": "x"})


def test_a_failed_upgrade_reports_its_rollback():
    report = UpgradeReport(plan=UPGRADE_PLAN, dry_run=False, outcome="planned")
    report.outcome = "failed, rolled back"
    report.error = "at step start 0.16.2: not healthy after 3 s"
    report.rollback = {
        "ok": True,
        "version": "0.11.7",
        "agents": 16,
        "agents_equal": True,
        "count_differences": [],
        "set": SET,
        "sequences": [],
        "seconds": 51.3,
    }
    assert report.rollback.ok and report.rollback.error is None
    assert "- rollback: succeeded (version 0.11.7, 51.3 s) " in render_upgrade_markdown(report)
    report.rollback = {"ok": False, "error": "pg_restore: error: boom", "set": SET, "seconds": 2.0}
    assert _json(report)["rollback"]["error"] == "pg_restore: error: boom"
    assert "- rollback: FAILED (version None, 2.0 s) pg_restore" in render_upgrade_markdown(report)


def test_the_upgrade_report_says_where_its_time_went():
    """Phases (issue #32 item 1) in --json, the artifact's markdown and the CLI's text; a
    report without them (a refused or older run) says nothing about phases."""
    from letta_ops.cli.upgrade import render_upgrade

    at = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    phases = [
        {"name": "backup", "started_at": at, "seconds": 12.25},
        {"name": "stop server", "started_at": at, "seconds": 1.0},
        {"name": "alembic upgrade to 0.16.2", "started_at": at, "seconds": 18.04},
    ]
    report = UpgradeReport(plan=UPGRADE_PLAN, dry_run=False, outcome="succeeded")
    assert report.phases == [] and "Phases" not in render_upgrade_markdown(report)
    assert "phases:" not in render_upgrade(report)
    report.phases = phases
    document = _json(report)
    assert document["phases"][2] == {
        "name": "alembic upgrade to 0.16.2",
        "started_at": "2026-11-23T04:00:00Z",
        "seconds": 18.04,
    }
    markdown = render_upgrade_markdown(report)
    assert "## Phases" in markdown
    assert "| alembic upgrade to 0.16.2 | 2026-11-23T04:00:00+00:00 | 18.0 |" in markdown
    assert render_upgrade(report).splitlines()[-1] == (
        "phases: backup 12.2 s, stop server 1.0 s, alembic upgrade to 0.16.2 18.0 s"
    )


def test_rehearsal_report():
    report = RehearsalReport(plan=UPGRADE_PLAN, source_set=SET, outcome="running")
    report.copy_ = {"database": "letta_ops_rehearsal_1", "base_url": "http://127.0.0.1:40001"}
    report.counts_before = {"agents": 16, "messages": 112}
    report.outcome = "succeeded"
    report.verification = [VERIFICATION_ROW]
    report.not_carried = {"messages": 2, "archival_passages": 0, "note": "agent files carry"}
    report.counts_after = {"agents": 16, "messages": 110, "runs": 0}
    report.target_health = {"version": "0.16.2", "status": "ok"}
    report.steps = [{"step": "stop server", "seconds": 1.0}, {"step": "verify", "seconds": 2.0}]
    report.downtime_steps = [{"step": "stop server", "seconds": 1.0}]
    report.downtime_seconds = 61.2
    report.warnings = ["WARNING: pool size"]
    report.finished_at = datetime(2026, 11, 23, 4, 2, tzinfo=UTC)
    document = _json(report)
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["copy"] == {
        "database": "letta_ops_rehearsal_1",
        "base_url": "http://127.0.0.1:40001",
    }
    assert {
        "plan",
        "source_set",
        "outcome",
        "copy",
        "counts_before",
        "verification",
        "not_carried",
        "counts_after",
        "target_health",
        "steps",
        "downtime_steps",
        "downtime_seconds",
        "warnings",
        "finished_at",
    } <= set(document)
    assert document["downtime_steps"] == [{"step": "stop server", "seconds": 1.0}]
    assert RehearsalReport.model_validate(document).copy_.database == "letta_ops_rehearsal_1"
    markdown = render_rehearsal_markdown(report)
    assert "- measured downtime: 61.2 s\n  - stop server: 1.0 s" in markdown
    assert "- log: WARNING: pool size" in markdown
    _rejects_unknown_keys(
        RehearsalReport, {"plan": UPGRADE_PLAN, "source_set": SET, "outcome": "x"}
    )


def test_rollback_plan_and_report():
    planned = RollbackReport(plan=ROLLBACK_PLAN, dry_run=True, outcome="planned")
    document = _json(planned)
    assert document["schema_version"] == SCHEMA_VERSION
    assert set(document["plan"]) == set(ROLLBACK_PLAN)
    assert document["plan"]["set_created_at"] == "2026-11-23T02:15:00Z"
    assert document["plan"]["expected_downtime_seconds"] == 75  # not 75.0

    report = RollbackReport(plan=ROLLBACK_PLAN, dry_run=False, outcome="planned")
    report.safety_set = SAFETY
    report.started_at = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    report.downtime_seconds = 41.0
    report.sequences = SEQUENCES["changes"]
    report.restore_warnings = []
    report.verification = PROOF
    report.outcome = "succeeded"
    report.finished_at = datetime(2026, 11, 24, 3, 1, tzinfo=UTC)
    document = _json(report)
    assert {
        "plan",
        "dry_run",
        "outcome",
        "safety_set",
        "started_at",
        "downtime_seconds",
        "sequences",
        "restore_warnings",
        "verification",
        "finished_at",
    } <= set(document)
    assert document["verification"] == PROOF and document["sequences"] == SEQUENCES["changes"]
    markdown = render_rollback_markdown(report)
    assert "- set taken 2026-11-23T02:15:00+00:00 (pre-upgrade); 6 objects" in markdown
    assert f"- safety backup (undo with --to): {SAFETY}" in markdown
    assert (
        "- written since the set (lost; in the safety backup): 12 messages, 1 agents, "
        "3 blocks, 0 passages" in markdown
    )
    assert "- agents created since the set: ['added']" in markdown

    report.outcome = "failed, undone"
    report.undo = {"ok": True, "version": "0.16.2", "set": SAFETY, "seconds": 50.0}
    assert f"- undo: restored {SAFETY} (version 0.16.2, 50.0 s) " in render_rollback_markdown(
        report
    )
    _rejects_unknown_keys(RollbackReport, {"plan": ROLLBACK_PLAN, "dry_run": True, "outcome": "x"})


def test_restore_plan_and_report():
    planned = RestoreReport(plan=RESTORE_PLAN, dry_run=True, outcome="planned")
    document = _json(planned)
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["dry_run"] is True and document["outcome"] == "planned"
    assert set(document["plan"]) == set(RESTORE_PLAN)

    report = RestoreReport(plan=RESTORE_PLAN, outcome="running")
    report.count_differences = []
    report.sequences = SEQUENCES["changes"]
    report.restore_warnings = ["pg_restore: warning: errors ignored on restore: 1"]
    report.server = {
        "pid": 4242,
        "version": "0.11.7",
        "base_url": "http://127.0.0.1:8300",
        "auth": "password required",
    }
    report.verification = PROOF
    report.address_with = {
        "LETTA_BASE_URL": "http://127.0.0.1:8300",
        "LETTA_OPS_SERVER_NAME": "127.0.0.1-8300",
        "LETTA_PG_URI": RESTORE_PLAN["target"],
    }
    report.outcome = "succeeded"
    report.finished_at = datetime(2026, 11, 24, 3, 1, tzinfo=UTC)
    document = _json(report)
    assert {
        "plan",
        "outcome",
        "count_differences",
        "sequences",
        "restore_warnings",
        "server",
        "verification",
        "address_with",
        "finished_at",
    } <= set(document)
    assert document["dry_run"] is False
    assert document["address_with"]["LETTA_OPS_SERVER_NAME"] == "127.0.0.1-8300"
    assert document["server"]["pid"] == 4242
    assert "- started Letta 0.11.7 at http://127.0.0.1:8300 (pid 4242)" in (
        render_restore_markdown(report)
    )
    report.count_differences = [{"table": "messages", "expected": 12, "actual": 11}]
    assert "- messages: manifest 12, restored 11" in render_restore_markdown(report)
    _rejects_unknown_keys(RestoreReport, {"plan": RESTORE_PLAN, "outcome": "x"})


def test_recover_report():
    nothing = RecoverReport(
        server="prod", outcome="nothing to recover", message="No interrupted run; nothing."
    )
    assert _json(nothing)["message"] == "No interrupted run; nothing."

    plan = RecoveryPlan(
        run_id="run-1",
        operation="upgrade",
        server="prod",
        interrupted_at="alembic upgrade to 0.16.2",
        step_ended=False,
        action="restore",
        reason="the database is not verifiably at the target",
        backup_set=SET,
        version="0.14.0",
        facts={"backup_set": SET, "strategy": "migrate", "reset_mode": "in-place"},
    )
    report = RecoverReport(
        server="prod",
        outcome="planned",
        interrupted_run="run-1",
        why_dead="its process (pid 7 on h) is gone",
        plan=plan,
        others=[],
    )
    assert report.plan.action == "restore"
    assert _json(report)["plan"] == plan.to_dict()
    report.result = {
        "ok": True,
        "version": "0.14.0",
        "agents": 5,
        "agents_equal": True,
        "count_differences": [],
        "set": SET,
        "sequences": [],
        "seconds": 44.1,
        "done": f"restored {SET} and started Letta 0.14.0",
    }
    report.crashed = "interrupted during 'alembic upgrade to 0.16.2': its process is gone"
    report.outcome = "recovered"
    document = _json(report)
    assert document["schema_version"] == SCHEMA_VERSION
    assert {
        "server",
        "interrupted_run",
        "why_dead",
        "plan",
        "others",
        "result",
        "crashed",
        "outcome",
    } <= set(document)
    assert document["result"]["done"] == f"restored {SET} and started Letta 0.14.0"
    assert RecoverReport.model_validate(document).plan == plan
    markdown = render_recover_markdown(report)
    assert "- decision: restore: the database is not verifiably at the target" in markdown
    assert f"- result: restored {SET} and started Letta 0.14.0" in markdown
    _rejects_unknown_keys(RecoverReport, {"server": "prod", "outcome": "x"})


def test_unlock_report():
    holder = {
        "flow_run_id": "6c1a0e4e-0000-4000-8000-000000000000",
        "flow_run_name": "upgrade-prod-to-0.16.2",
        "host": "worker-1",
        "pid": 4242,
        "since": "2026-11-23T02:15:00+00:00",
        "lease_id": "0b4e1f1e-0000-4000-8000-000000000000",
        "lease_expires_at": "2026-11-23T02:20:00+00:00",
    }
    freed = UnlockReport(
        server="prod", freed=True, reason="pid 4242 on worker-1 is gone", holder=holder
    )
    document = _json(freed)
    assert document["schema_version"] == SCHEMA_VERSION
    assert {"server", "freed", "reason", "holder"} <= set(document)
    assert document["holder"]["since"] == "2026-11-23T02:15:00Z"
    assert freed.holder.pid == 4242
    # A holder an older letta-ops recorded may lack any of it.
    assert UnlockReport(server="p", freed=False, reason="r", holder={"pid": 1}).holder.host is None
    _rejects_unknown_keys(UnlockReport, {"server": "prod", "freed": False, "reason": "free"})


def test_cli_renderers_read_the_reports():
    from letta_ops.cli.restore import render_recover, render_restore_plan, render_unlock
    from letta_ops.cli.upgrade import render_plan, render_rehearsal, render_upgrade

    planned = UpgradeReport(plan=UPGRADE_PLAN, dry_run=True, outcome="planned")
    text = render_plan(planned)
    assert "Letta 0.11.7 -> 0.16.2, strategy rebuild (LOSSY: agent files only)" in text
    assert "expected downtime about 61.2 s (measured by the rehearsal" in text
    assert "renames (ascii):\n  agent-4: 'AI/ML Expert' -> 'AI-ML Expert'" in text
    assert "given back after the import:\n  agent-5: 'Café Ñandú' (travels as 'Cafe Nandu')" in text

    done = UpgradeReport(
        plan=UPGRADE_PLAN,
        dry_run=False,
        outcome="succeeded",
        backup_set=SET,
        downtime_seconds=88.4,
        verification=[VERIFICATION_ROW],
    )
    text = render_upgrade(done)
    assert f"outcome: succeeded, downtime 88.4 s, backup {SET}" in text
    assert "NAME_BEFORE" in text and "AI-ML Expert" in text

    rehearsed = RehearsalReport(
        plan=UPGRADE_PLAN,
        source_set=SET,
        outcome="succeeded",
        downtime_seconds=61.2,
        downtime_steps=[{"step": "stop server", "seconds": 1.0}],
    )
    assert "measured downtime 61.2 s:\n  stop server: 1.0 s" in render_rehearsal(rehearsed)

    restore_plan = RestoreReport(plan=RESTORE_PLAN, dry_run=True, outcome="planned")
    assert "then start Letta 0.11.7 at http://127.0.0.1:8300" in render_restore_plan(restore_plan)
    assert "left alone" not in render_restore_plan(restore_plan)

    from letta_ops.cli.restore import render_rollback_plan

    rollback_plan = RollbackReport(plan=ROLLBACK_PLAN, dry_run=True, outcome="planned")
    assert (
        "left alone (not Letta's): table public.app_notes, schema auth (3 objects)"
        in render_rollback_plan(rollback_plan)
    )

    nothing = RecoverReport(server="prod", outcome="nothing to recover", message="Nothing.")
    assert render_recover(nothing) == "Nothing."

    would = UnlockReport(server="prod", freed=False, would_free=True, reason="pid 7 is gone")
    assert render_unlock(would) == (
        "plan (nothing freed): would free the slot of prod: pid 7 is gone"
    )
    free = UnlockReport(server="prod", freed=False, reason="the slot is free")
    assert render_unlock(free) == "nothing to free on prod: the slot is free"
