"""The maintenance flows' reports: built from what their tasks return, dumped to the same
``--json`` keys as before (plus ``schema_version``), closed to unknown keys; and the command
line's tables and the flows' markdown read them (no server needed)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from letta_ops.cli import maintenance as cli_maintenance
from letta_ops.cli.output import to_json
from letta_ops.flows.cleanup_sources import SourceCleanupReport, render_cleanup_markdown
from letta_ops.flows.doctor import DoctorReport, render_doctor_markdown
from letta_ops.flows.rename_agents import RenameReport, mapping, render_markdown
from letta_ops.flows.repair_sequences import (
    CreateSequence,
    MoveSequence,
    SequenceRepairReport,
    SetDefault,
    render_repair_markdown,
)
from letta_ops.flows.restore_agents import AgentRestoreReport, render_restore_agents_markdown
from letta_ops.flows.sync_tools import ToolSyncReport, render_sync_markdown
from letta_ops.tasks.doctor.findings import Finding
from letta_ops.tasks.letta import tool_sync
from letta_ops.tasks.letta.source_cleanup import CleanupItem, CleanupPlan
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION


def _dumped(report, keys: list[str]) -> dict:
    """The report's JSON: ``schema_version`` first, then exactly the old keys."""
    data = report.model_dump(mode="json")
    assert list(data) == ["schema_version", *keys]
    assert data["schema_version"] == SCHEMA_VERSION
    assert json.loads(to_json(report)) == data  # what --json prints
    return data


def _rejects_unknown_key(model, data: dict) -> None:
    model.model_validate(data)
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**data, "surprise": 1})


# --------------------------------------------------------------------------- sync-tools


def _sync_dict() -> dict:
    run = tool_sync.ToolSyncReport(
        control_agent_id="agent-c",
        control_agent_name="control",
        control_tools=["a", "b"],
        mode="exact",
        dry_run=True,
        selector="tag fleet",
        agents=[
            tool_sync.AgentToolResult("agent-1", "one", attached=["b"], detached=["x"]),
            tool_sync.AgentToolResult("agent-2", "two", unchanged=2),
            tool_sync.AgentToolResult("agent-3", "three", error="HTTP 500"),
        ],
    )
    return run.to_dict()  # what the flow validates


def test_tool_sync_report():
    report = ToolSyncReport.model_validate(_sync_dict())
    data = _dumped(
        report,
        [
            "control_agent",
            "control_tools",
            "mode",
            "dry_run",
            "selector",
            "targets",
            "attached",
            "detached",
            "unchanged_agents",
            "errors",
            "agents",
        ],
    )
    assert data["control_agent"] == {"id": "agent-c", "name": "control"}
    assert data["agents"][0] == {
        "agent_id": "agent-1",
        "agent_name": "one",
        "attached": ["b"],
        "detached": ["x"],
        "unchanged": 0,
        "error": None,
    }
    assert (report.targets, report.attached, report.detached, report.errors) == (3, 1, 1, 1)
    assert report.unchanged_agents == 1
    _rejects_unknown_key(ToolSyncReport, _sync_dict())

    markdown = render_sync_markdown("prod", report)
    assert "'control' (`agent-c`), 2 tools" in markdown
    assert "- 'three' (`agent-3`): HTTP 500" in markdown
    table = cli_maintenance._render_sync(report)
    assert "agent-1" in table and "agent-2" not in table and "errors 1" in table


# --------------------------------------------------------------------------- cleanup-sources


def _cleanup_dict(executed: bool) -> dict:
    plan = CleanupPlan(
        remove=[
            CleanupItem("s2", "kb_2", "duplicate", "copy of kb", duplicate_of="s1"),
            CleanupItem("s3", "scratch", "orphan", "attached to no agent", outcome="deleted"),
            CleanupItem("s9", "ghost", "phantom", "404 on delete", outcome="deleted in SQL"),
        ],
        kept=[{"id": "s4", "name": "handbook_2", "reason": "attached to 1 agent(s)"}],
        folders_total=6,
    )
    outcome = {"backup_set": "prod/20260101T000000Z", "removed": 3, "left": 0}
    return {
        "server": "prod",
        "executed": executed,
        "sql": True,
        **(outcome if executed else {}),
        **plan.to_dict(),
    }


def test_source_cleanup_report():
    done = SourceCleanupReport.model_validate(_cleanup_dict(executed=True))
    keys = [
        "server",
        "executed",
        "sql",
        "backup_set",
        "removed",
        "left",
        "folders_total",
        "orphans",
        "duplicates",
        "phantoms",
        "remove",
        "kept",
    ]
    data = _dumped(done, keys)
    assert (data["orphans"], data["duplicates"], data["phantoms"]) == (1, 1, 1)
    assert data["remove"][0] == {
        "id": "s2",
        "name": "kb_2",
        "category": "duplicate",
        "reason": "copy of kb",
        "duplicate_of": "s1",
        "outcome": "planned",
    }
    assert data["kept"] == [{"id": "s4", "name": "handbook_2", "reason": "attached to 1 agent(s)"}]
    plan = SourceCleanupReport.model_validate(_cleanup_dict(executed=False))
    assert (plan.backup_set, plan.removed, plan.left) == (None, None, None)
    _rejects_unknown_key(SourceCleanupReport, _cleanup_dict(executed=False))

    assert "- backup before the SQL step: prod/20260101T000000Z" in render_cleanup_markdown(
        "prod", done
    )
    assert "| kb_2 | `s2` | duplicate | copy of kb | planned |" in render_cleanup_markdown(
        "prod", plan
    )
    table = cli_maintenance._render_cleanup(done)
    assert "removed 3, left 0 (backup before the SQL step: prod/20260101T000000Z)" in table
    assert "kept 'handbook_2' (s4): attached to 1 agent(s)" in table
    planned = cli_maintenance._render_cleanup(plan)
    assert "plan (nothing deleted; add --execute): 1 orphan(s)" in planned and "kb_2" in planned


# --------------------------------------------------------------------------- repair-sequences


def _repair_dict() -> dict:
    checked = {
        "table": "messages",
        "column": "sequence_id",
        "sequence": "public.message_seq_id",
        "source": "default",
        "max": 250,
        "next_value": 1,
        "ok": False,
    }
    return {
        "server": "prod",
        "dry_run": False,
        "schema": "public",
        "columns": 1,
        "problems_before": ["messages.sequence_id has no default"],
        "changes": [
            {"action": "create-sequence", "sequence": "public.message_seq_id"},
            {
                "action": "set-default",
                "table": "messages",
                "column": "sequence_id",
                "sequence": "public.message_seq_id",
            },
            {
                "action": "setval",
                "sequence": "public.message_seq_id",
                "table": "messages",
                "column": "sequence_id",
                "from": 1,
                "to": 251,
            },
        ],
        "problems_after": [],
        "checked": [checked],
    }


def test_sequence_repair_report_keeps_its_keys():
    report = SequenceRepairReport.model_validate(_repair_dict())
    keys = [
        "server",
        "dry_run",
        "schema",
        "columns",
        "problems_before",
        "changes",
        "problems_after",
        "checked",
    ]
    data = _dumped(report, keys)
    old = _repair_dict()
    assert {k: data[k] for k in keys} == old  # every key and value as the dict had them
    assert [list(c) for c in data["changes"]] == [list(c) for c in old["changes"]]  # in order
    assert report.schema_ == "public"
    create, default, move = report.changes
    assert isinstance(create, CreateSequence) and isinstance(default, SetDefault)
    assert isinstance(move, MoveSequence) and (move.from_, move.to) == (1, 251)
    assert move.model_dump() == old["changes"][2]
    _rejects_unknown_key(SequenceRepairReport, _repair_dict())
    unknown_action = _repair_dict()
    unknown_action["changes"].append({"action": "drop-table", "table": "agents"})
    with pytest.raises(ValidationError):
        SequenceRepairReport.model_validate(unknown_action)

    markdown = render_repair_markdown("prod", report)
    assert "- changed: 3" in markdown
    assert f"  - setval: {old['changes'][2]}" in markdown  # the change as the dict printed
    table = cli_maintenance._render_repair(report)
    assert "messages.sequence_id" in table and "251" in table
    assert "1 sequence column(s) checked in schema public; changed 3" in table
    assert "create-sequence  public.message_seq_id" in table


# --------------------------------------------------------------------------- rename-agents


def test_rename_report_keeps_from_and_to():
    renames = {"agent-1": {"old": "AI/ML Expert", "new": "AI-ML Expert"}}
    plan = {"server": "prod", "version": "0.16.2", "executed": False, "renames": mapping(renames)}
    report = RenameReport.model_validate(plan)
    data = _dumped(report, ["server", "version", "executed", "renames", "message", "backup_set"])
    assert data["renames"] == [{"agent": "agent-1", "from": "AI/ML Expert", "to": "AI-ML Expert"}]
    assert report.renames[0].from_ == "AI/ML Expert"
    _rejects_unknown_key(RenameReport, plan)

    assert "- `agent-1`: 'AI/ML Expert' -> 'AI-ML Expert'" in render_markdown(report)
    table = cli_maintenance._render_renames(report)
    assert "AI/ML Expert" in table and "plan only: rerun with --execute" in table
    report.executed, report.backup_set = True, "prod/20260101T000000Z"
    assert "names before are in prod/20260101T000000Z" in cli_maintenance._render_renames(report)
    nothing = RenameReport(server="prod", version="0.16.2", executed=False, renames=[])
    assert cli_maintenance._render_renames(nothing) == "nothing to do"
    nothing.message = "Every agent's name is valid for Letta 0.16.2; nothing to do."
    assert cli_maintenance._render_renames(nothing) == nothing.message


# --------------------------------------------------------------------------- doctor


def _doctor_dict() -> dict:
    findings = [
        Finding("sequences", "action", "no default", "letta-ops repair-sequences"),
        Finding("backup-age", "action", "old", "back up"),
        Finding("health", "ok", "Letta 0.16.2 answers"),
    ]
    return {
        "server": "prod",
        "base_url": "http://127.0.0.1:8283",
        "version": "0.16.2",
        "needs_action": True,
        "findings": [f.to_dict() for f in findings],
        "ignored": ["backup-age"],
    }


def test_doctor_report():
    report = DoctorReport.model_validate(_doctor_dict())
    keys = ["server", "base_url", "version", "needs_action", "findings", "ignored"]
    data = _dumped(report, keys)
    assert {k: data[k] for k in keys} == _doctor_dict()
    _rejects_unknown_key(DoctorReport, _doctor_dict())
    with pytest.raises(ValidationError):
        DoctorReport.model_validate({**_doctor_dict(), "findings": [{"check": "x"}]})

    markdown = render_doctor_markdown(report)
    assert "**needs action**" in markdown and "Ignored by the operator: backup-age" in markdown
    assert "| health | ok | Letta 0.16.2 answers |  |" in markdown
    text = cli_maintenance._render_doctor(report)
    assert "backup-age (ignored)" in text and "NEEDS ACTION" in text


# --------------------------------------------------------------------------- restore-agents


def _restore_agents_dict() -> dict:
    row = {
        "agent_id": "agent-old",
        "name_in_set": "Helper",
        "restored_as": "Helper",
        "renamed": False,
        "new_id": "agent-new",
        "blocks": 2,
        "blocks_match": True,
        "messages_in_file": 4,
        "messages_restored": 4,
        "ok": True,
    }
    return {
        "set": "prod/20260101T000000Z",
        "server": "prod",
        "letta_version": "0.16.2",
        "as_copy": False,
        "agents": [row],
        "outcome": "succeeded",
        "note": "agent files carry memory blocks and part of the message history",
    }


def test_agent_restore_report():
    report = AgentRestoreReport.model_validate(_restore_agents_dict())
    keys = ["set", "server", "letta_version", "as_copy", "agents", "outcome", "note"]
    data = _dumped(report, keys)
    assert {k: data[k] for k in keys} == _restore_agents_dict()
    _rejects_unknown_key(AgentRestoreReport, _restore_agents_dict())
    markdown = render_restore_agents_markdown(report)
    assert "- 'Helper' (agent-old) -> 'Helper' new id `agent-new`: 2 blocks, 4 of 4" in markdown
