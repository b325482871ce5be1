"""The reports of fleet-backup, fleet-upgrade and the demo: what the flows return and ``--json``
prints, and the text their renderers print from them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from letta_ops.cli.demo_job import DemoFlowRuns, DemoReport, render_demo
from letta_ops.cli.fleet import render_fleet_backup, render_fleet_upgrade
from letta_ops.cli.output import emit
from letta_ops.flows.fleet_backup import (
    FleetBackupReport,
    FleetBackupServer,
    render_fleet_backup_markdown,
)
from letta_ops.flows.fleet_upgrade import (
    FleetUpgradeReport,
    SoakResult,
    render_fleet_upgrade_markdown,
)
from letta_ops.flows.reports.upgrade import UpgradeReport
from letta_ops.tasks.runs.child_runs import ChildOutcome
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION
from tests.test_backup_reports import backup_report, verify_report

CHILD_KEYS = {"server", "flow_run_id", "state", "ok", "error", "seconds", "worker", "backup_set"}


def fleet_backup_report(**overrides) -> FleetBackupReport:
    """As ``fleet_backup()`` builds it: each child's outcome plus its set's size."""
    outcomes = [
        ChildOutcome(
            server="fleet-a",
            flow_run_id="run-a",
            state="COMPLETED",
            ok=True,
            seconds=41.5,
            worker="worker-1",
            backup_set="fleet-a/20261206T120000Z-abc",
        ),
        ChildOutcome(
            server="fleet-c",
            flow_run_id="run-c",
            state="FAILED",
            ok=False,
            error="the server does not answer",
            seconds=3.0,
            worker="worker-2",
        ),
    ]
    sizes = {"fleet-a": (3, 9000), "fleet-c": (None, None)}
    rows = [
        FleetBackupServer(**o.model_dump(), agents=sizes[o.server][0], bytes=sizes[o.server][1])
        for o in outcomes
    ]
    failed = [r for r in rows if not r.ok]
    fields = {
        "selector": "team:fleet",
        "servers": rows,
        "succeeded": len(rows) - len(failed),
        "failed": [r.server for r in failed],
    }
    return FleetBackupReport(**{**fields, **overrides})


def fleet_upgrade_report(**overrides) -> FleetUpgradeReport:
    """As ``fleet_upgrade()`` builds it, after a canary that held and a wave that failed."""
    report = FleetUpgradeReport(
        to_version="0.16.2",
        selector="team:fleet",
        waves=[["fleet-a"], ["fleet-b", "fleet-c"]],
        strategy="migrate",
        outcome="planned",
        versions={"fleet-a": "0.14.0", "fleet-b": "0.14.0", "fleet-c": None},
        outcomes={},
        **overrides,
    )
    report.outcomes["fleet-a"] = "upgraded"
    report.soak = SoakResult.model_validate(
        {"ok": True, "smoke": {"fleet-a": {"ok": True, "seconds": 1.2}}, "soak_seconds": 120.0}
    )
    report.outcomes["fleet-b"] = "failed (rolled back by its run): start timed out"
    report.stopped_because = "fleet-b failed: start timed out"
    report.outcomes.setdefault("fleet-c", "not started")
    report.versions = {"fleet-a": "0.16.2", "fleet-b": "0.14.0", "fleet-c": None}
    report.outcome = "stopped"
    return report


def test_fleet_backup_report_json_keeps_the_keys_and_refuses_unknown_ones():
    document = json.loads(fleet_backup_report().model_dump_json())
    assert list(document)[0] == "schema_version" and document["schema_version"] == SCHEMA_VERSION
    assert set(document) == {"schema_version", "selector", "servers", "succeeded", "failed"}
    assert [set(row) for row in document["servers"]] == [CHILD_KEYS | {"agents", "bytes"}] * 2
    assert document["servers"][0]["backup_set"] == "fleet-a/20261206T120000Z-abc"
    assert document["servers"][1]["agents"] is None and document["failed"] == ["fleet-c"]
    assert document["succeeded"] == 1
    with pytest.raises(ValidationError, match="extra"):
        fleet_backup_report(skipped=[])
    with pytest.raises(ValidationError, match="servers"):
        fleet_backup_report(servers=[{"server": "fleet-a"}])


def test_fleet_backup_renderers_read_the_report_attributes():
    report = fleet_backup_report()
    assert render_fleet_backup(report).splitlines() == [
        "SERVER   SET                           AGENTS  BYTES  SECONDS  OUTCOME"
        + "                             WORKER  ",
        "fleet-a  fleet-a/20261206T120000Z-abc  3       9000   41.5     ok"
        + "                                  worker-1",
        "fleet-c                                None    None   3.0      FAILED: the server does "
        + "not answer  worker-2",
        "1 of 2 server backups succeeded",
    ]
    assert render_fleet_backup_markdown(report).splitlines()[0] == (
        "# Fleet backup of 'team:fleet': 1 of 2 succeeded"
    )
    assert "| fleet-c |  |  |  | 3.0 | FAILED: the server does not answer | worker-2 |" in (
        render_fleet_backup_markdown(report)
    )


def test_fleet_upgrade_report_json_keeps_the_keys_and_refuses_unknown_ones():
    document = json.loads(fleet_upgrade_report().model_dump_json())
    assert document["schema_version"] == SCHEMA_VERSION
    assert set(document) == {
        "schema_version", "to_version", "selector", "waves", "strategy", "outcome", "versions",
        "outcomes", "approved_by", "soak", "stopped_because",
    }  # fmt: skip
    assert document["waves"] == [["fleet-a"], ["fleet-b", "fleet-c"]]
    assert document["versions"]["fleet-c"] is None
    assert document["outcomes"]["fleet-c"] == "not started"
    assert document["soak"] == {
        "ok": True,
        "error": None,
        "smoke": {"fleet-a": {"ok": True, "seconds": 1.2}},
        "soak_seconds": 120.0,
    }
    with pytest.raises(ValidationError, match="extra"):
        fleet_upgrade_report(canary="fleet-a")
    failed_soak = SoakResult.model_validate({"ok": False, "error": "fleet-a stopped reporting"})
    assert failed_soak.smoke is None and failed_soak.error == "fleet-a stopped reporting"


def test_fleet_upgrade_renderers_read_the_report_attributes():
    report = fleet_upgrade_report()
    assert render_fleet_upgrade(report).splitlines() == [
        "fleet upgrade to 0.16.2: stopped",
        "  wave 1: fleet-a (canary)",
        "  wave 2: fleet-b, fleet-c",
        "stopped: fleet-b failed: start timed out",
        "  fleet-a: 0.16.2 (upgraded)",
        "  fleet-b: 0.14.0 (failed (rolled back by its run): start timed out)",
        "  fleet-c: down (not started)",
    ]
    markdown = render_fleet_upgrade_markdown(report)
    assert markdown.splitlines()[:4] == [
        "# Fleet upgrade to 0.16.2: **stopped**",
        "",
        "waves: fleet-a | fleet-b, fleet-c",
        "stopped: fleet-b failed: start timed out",
    ]
    assert "| fleet-c | down | not started |" in markdown
    planned = FleetUpgradeReport(
        to_version="0.16.2",
        selector="*",
        waves=[["a"]],
        strategy="rebuild",
        outcome="planned",
        versions={"a": "0.14.0"},
        outcomes={},
    )
    assert render_fleet_upgrade(planned).splitlines() == [
        "fleet upgrade to 0.16.2: planned",
        "  wave 1: a (canary)",
        "  a: 0.14.0",
    ]


UPGRADE_PLAN = {
    "server": "demo",
    "base_url": "http://127.0.0.1:8283",
    "from_version": "0.11.7",
    "to_version": "0.16.2",
    "strategy": "migrate",
    "runtime": "letta-ops' process runtime: Letta on 127.0.0.1:8283",
    "pg_tools": "PostgreSQL client tools in /usr/lib/postgresql/18/bin",
    "alembic_revision": "ddb69be34a72",
    "reset_mode": "recreate",
    "database_role": "letta",
    "postgres_major": 18,
    "agents": 1,
    "database_bytes": 12_345_678,
    "free_bytes": 98_765_432_100,
    "name_rule": "ascii",
    "renames": {},
    "steps": ["backup (verified, pinned)", "stop server", "migrate", "start server"],
    "rehearsal": None,
    "expected_downtime_seconds": 60,
    "expected_downtime_source": "a guess: never rehearsed",
    "lossy": False,
}
UPGRADE = {
    "plan": UPGRADE_PLAN,
    "dry_run": False,
    "outcome": "succeeded",
    "backup_set": "demo/20261206T120000Z-abc",
    "started_at": "2026-12-06T12:00:00+00:00",
    "downtime_seconds": 12.5,
    "agents_after": 1,
    "verification": [
        {
            "agent": "agent-1",
            "name_before": "support",
            "name_after": "support",
            "messages_before": 4,
            "messages_after": 4,
            "blocks_before": 2,
            "blocks_after": 2,
        }
    ],
    "finished_at": "2026-12-06T12:01:00+00:00",
}
HEALTH = {"version": "0.16.2", "status": "ok"}


def demo_report(**overrides) -> DemoReport:
    """As ``run_demo()`` builds it from the three flows' reports."""
    upgrade = UpgradeReport.model_validate(UPGRADE)
    backup, drill = backup_report(), verify_report()
    runs = DemoFlowRuns(backup="run-1", upgrade="run-2", drill="run-3")
    ui = "http://127.0.0.1:4200"
    fields = {
        "ok": upgrade.outcome == "succeeded" and drill.ok and HEALTH["version"] == "0.16.2",
        "backup": backup,
        "upgrade": upgrade,
        "drill": drill,
        "flow_runs": runs,
        "prefect_ui": ui,
        "text": render_demo(backup, upgrade, drill, HEALTH, runs, ui),
    }
    return DemoReport(**{**fields, **overrides})


def test_demo_text_is_the_report_it_printed_before():
    assert demo_report().text.splitlines() == [
        "",
        "letta-ops demo report",
        "=====================",
        "backup   prod/20261206T120000Z-abc: 2 of 3 agent files, dump 4096 bytes, verified=True",
        "         not exportable by 0.16.2: 'a/b' (agent-1); the pg_dump holds it",
        "upgrade  0.11.7 -> 0.16.2 (migrate): succeeded, downtime 12.5 s, pre-upgrade set "
        "demo/20261206T120000Z-abc",
        "server   now Letta 0.16.2 (ok)",
        "drill    restored 61 tables into a scratch database, 1 count differences",
        "",
        "verification (per agent, before -> after):",
        "NAME_BEFORE  MESSAGES_BEFORE  MESSAGES_AFTER  BLOCKS_BEFORE  BLOCKS_AFTER",
        "support      4                4               2              2           ",
        "",
        "Prefect UI: http://127.0.0.1:4200",
        "  backup   http://127.0.0.1:4200/runs/flow-run/run-1",
        "  upgrade  http://127.0.0.1:4200/runs/flow-run/run-2",
        "  drill    http://127.0.0.1:4200/runs/flow-run/run-3",
        "  (artifacts: the run's Artifacts tab; stop the UI with 'letta-ops demo --stop-ui')",
    ]
    bare = UpgradeReport.model_validate({**UPGRADE, "verification": None, "downtime_seconds": None})
    runs = DemoFlowRuns(backup="r1", upgrade="r2", drill="r3")
    text = render_demo(backup_report(), bare, verify_report(), HEALTH, runs, "")
    assert "downtime None s" in text and text.endswith("(none)")


def test_demo_report_json_embeds_the_flows_reports_and_refuses_unknown_keys(capsys):
    emit(demo_report(), as_json=True, render=lambda r: r.text)
    document = json.loads(capsys.readouterr().out)
    assert document["schema_version"] == SCHEMA_VERSION
    assert set(document) == {
        "schema_version", "ok", "backup", "upgrade", "drill", "flow_runs", "prefect_ui", "text",
    }  # fmt: skip
    assert document["ok"] is True
    assert document["backup"]["set"] == "prod/20261206T120000Z-abc"
    assert document["backup"]["schema_version"] == SCHEMA_VERSION
    assert document["drill"]["drill_result"]["tables"] == 61
    assert document["upgrade"]["backup_set"] == "demo/20261206T120000Z-abc"
    assert document["upgrade"]["verification"][0]["name_before"] == "support"
    assert document["upgrade"]["plan"]["strategy"] == "migrate"
    assert document["flow_runs"] == {"backup": "run-1", "upgrade": "run-2", "drill": "run-3"}
    with pytest.raises(ValidationError, match="extra"):
        demo_report(health=HEALTH)
    with pytest.raises(ValidationError, match="drill"):
        demo_report(drill={"ok": True})
    with pytest.raises(ValidationError, match="upgrade"):
        demo_report(upgrade={"outcome": "succeeded"})
