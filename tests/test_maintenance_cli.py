"""The maintenance commands' arguments and tables (no server: bad input stops at the parser)."""

from __future__ import annotations

import pytest

from letta_ops.cli import maintenance as cli_maintenance
from letta_ops.cli.main import build_parser, main
from letta_ops.tasks.errors import EXIT_BAD_INPUT


@pytest.mark.parametrize(
    "argv",
    [
        ["sync-tools", "--tag", "fleet"],  # no --control
        ["sync-tools", "--control", "c", "--dry-run", "--execute"],
        ["sync-tools", "--control", "c", "--mode", "force"],
        ["sync-tools", "--control", "c", "--concurrency", "0"],
        ["cleanup-sources", "--dry-run", "--execute"],
        ["doctor", "--ignore", "everything"],
    ],
)
def test_bad_arguments_exit_2_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "letta-ops: error:" in capsys.readouterr().err


def test_defaults_plan_what_deletes_and_apply_what_adds():
    parser = build_parser()
    sync = parser.parse_args(["sync-tools", "--control", "c", "--tag", "a", "--tag", "b"])
    assert (sync.mode, sync.dry_run, sync.execute, sync.tag) == (
        "additive",
        False,
        False,
        ["a", "b"],
    )
    cleanup = parser.parse_args(["cleanup-sources"])
    assert (cleanup.execute, cleanup.sql) == (False, False)
    doctor = parser.parse_args(["doctor", "--ignore", "encryption-key"])
    assert doctor.ignore == ["encryption-key"] and doctor.compose_service == "letta_server"


def test_tables_say_whether_anything_changed():
    from letta_ops.flows.doctor import DoctorReport
    from letta_ops.flows.sync_tools import ToolSyncReport

    report = {
        "dry_run": True,
        "mode": "exact",
        "selector": "tag fleet",
        "control_agent": {"id": "agent-c", "name": "control"},
        "control_tools": ["a", "b"],
        "targets": 2,
        "attached": 1,
        "detached": 1,
        "unchanged_agents": 1,
        "errors": 0,
        "agents": [
            {
                "agent_id": "agent-1",
                "agent_name": "one",
                "attached": ["b"],
                "detached": ["x"],
                "unchanged": 1,
                "error": None,
            },
            {
                "agent_id": "agent-2",
                "agent_name": "two",
                "attached": [],
                "detached": [],
                "unchanged": 2,
                "error": None,
            },
        ],
    }
    text = cli_maintenance._render_sync(ToolSyncReport.model_validate(report))
    assert "add --execute to detach" in text and "agent-1" in text and "agent-2" not in text
    doctor = {
        "server": "prod",
        "base_url": "http://127.0.0.1:8283",
        "version": "0.16.2",
        "needs_action": True,
        "ignored": ["backup-age"],
        "findings": [
            {"check": "sequences", "status": "action", "detail": "no default", "fix": "repair"},
            {"check": "backup-age", "status": "action", "detail": "old", "fix": "back up"},
        ],
    }
    text = cli_maintenance._render_doctor(DoctorReport.model_validate(doctor))
    assert "ACTION" in text and "backup-age (ignored)" in text and "NEEDS ACTION" in text
