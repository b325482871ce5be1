"""``audited_run`` inside real Prefect flow runs, and the ``letta-ops history`` commands."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from letta_ops.cli.main import main
from letta_ops.tasks.audit.store import AuditRecord, AuditStore
from letta_ops.tasks.runs.audit_record import audited_run, triggered_by
from letta_ops.tasks.store.local import LocalObjectStore

PASSWORD = "Kn0wn-Test-Passw0rd"


def _history(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_outcomes_outside_prefect(audit_db, tmp_path, monkeypatch):
    monkeypatch.setenv("LETTA_PG_URI", f"postgresql://letta:{PASSWORD}@127.0.0.1:5432/letta")
    objects = LocalObjectStore(tmp_path / "store")
    params = {"store": "file:///x", "password": PASSWORD, "uri": f"postgresql://u:{PASSWORD}@h/d"}

    with audited_run("backup", "prod", params, store=objects) as record:
        record.update(versions_from="0.16.2", counts_before={"agents": 3}, skipped=None)
    with pytest.raises(RuntimeError, match="boom"):
        with audited_run("upgrade", "prod") as record:
            record.update(versions_from="0.11.7", versions_to="0.16.2", store=objects)
            raise RuntimeError(f"boom: could not connect to postgresql://letta:{PASSWORD}@h/d")
    with pytest.raises(KeyboardInterrupt):
        with audited_run("verify", "prod"):
            raise KeyboardInterrupt

    rows = {r.operation: r for r in AuditStore.from_env().query()}
    assert rows["backup"].outcome == "succeeded" and rows["backup"].counts_before == {"agents": 3}
    assert rows["backup"].parameters == {"store": "file:///x", "uri": "postgresql://u@h/d"}
    assert rows["upgrade"].outcome == "failed" and "boom" in rows["upgrade"].error
    assert rows["verify"].outcome == "cancelled"
    assert all(r.ended_at and r.triggered_by for r in rows.values())
    assert PASSWORD.encode() not in audit_db.read_bytes()
    stored = [p for p in (tmp_path / "store").rglob("*.json")]
    assert len(stored) == 2
    assert not any(PASSWORD in p.read_text() for p in stored)


def test_a_run_killed_after_its_profile_loaded_is_filed_under_its_server(audit_db):
    with audited_run("upgrade", None) as record:
        [running] = AuditStore.from_env().find(record.record_id)
        assert running.server == "unknown" and running.outcome == "running"
        record.update(server="prod-eu")
        # What a kill -9 from here on would leave behind: the running row, with its server.
        [running] = AuditStore.from_env().find(record.record_id)
        assert (running.server, running.outcome) == ("prod-eu", "running")
        assert running.details["pid"] > 0 and running.details["host"]


def test_audit_failures_never_fail_the_run(monkeypatch, tmp_path, caplog):
    # Both stores unwritable, for root too (tests run as root, which ignores a chmod): no
    # directory can be made under /proc, nor under a path whose parent is a regular file.
    monkeypatch.setenv("LETTA_OPS_AUDIT_URL", "sqlite:////proc/no-such-dir/audit.db")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    objects = LocalObjectStore(blocker / "store")
    caplog.set_level(logging.WARNING)
    steps = []
    with audited_run("backup", "prod", {}, store=objects) as record:
        record.update(counts_before=object())  # not JSON: kept as text, no failure
        steps.append("body ran to its end")
    assert steps == ["body ran to its end"]  # and the with statement raised nothing
    assert record.record.outcome == "succeeded" and record.record.ended_at is not None
    assert record.record.counts_before is None
    assert record.record.details["counts_before"].startswith("<object object at ")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("audit: the local audit store is not writable") for w in warnings)
    assert any(
        w.startswith("audit: could not write the record to the backup store") for w in warnings
    )
    assert any(
        w.startswith("audit: could not write the record to the local audit store") for w in warnings
    )
    assert blocker.read_text() == "not a directory"


def test_triggered_by_operator_schedule_or_user():
    from prefect.client.schemas.objects import CreatedBy, FlowRun

    scheduled = FlowRun(flow_id=uuid4(), auto_scheduled=True)
    by_user = FlowRun(flow_id=uuid4(), created_by=CreatedBy(type="USER", display_value="ana"))
    by_automation = FlowRun(
        flow_id=uuid4(), created_by=CreatedBy(type="AUTOMATION", display_value="nightly")
    )
    assert triggered_by(scheduled, {}) == "schedule"
    assert triggered_by(by_user, {}) == "ana"
    assert triggered_by(by_automation, {}) == "automation:nightly"
    assert triggered_by(scheduled, {"LETTA_OPS_OPERATOR": "bob"}) == "schedule"
    assert triggered_by(FlowRun(flow_id=uuid4(), deployment_id=uuid4()), {}) == "prefect-api"
    assert triggered_by(FlowRun(flow_id=uuid4()), {"LETTA_OPS_OPERATOR": "bob"}) == "bob"
    assert triggered_by(None, {}).startswith("local:")


def test_prefect_runs_are_recorded_named_tagged_and_shown(
    audit_db, tmp_path, monkeypatch, capsys, prefect_harness
):
    from prefect import flow, get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from letta_ops.tasks.runs.context import publish_report, run_name, tag_current_run

    monkeypatch.setenv("LETTA_OPS_OPERATOR", "alice")
    monkeypatch.setenv("LETTA_API_KEY", PASSWORD)
    objects = LocalObjectStore(tmp_path / "store")
    monkeypatch.setenv("LETTA_OPS_STORE", (tmp_path / "store").as_uri())

    @flow(name="letta-audit-probe", flow_run_name=run_name("probe", "to_version"))
    def probe(server: str, to_version: str, api_key: str, fail: bool = False) -> str:
        with audited_run("probe", server) as record:
            tag_current_run(server, "probe")
            record.update(versions_from="0.11.7", versions_to=to_version, store=objects)
            publish_report(server, "probe", f"# probe of {server}\n\nall good")
            get_run_logger().warning("disk almost full on %s", server)
            if fail:
                raise ValueError("forced failure")
            return record.record_id

    record_id = probe("prod", "0.16.2", PASSWORD)
    state = probe("prod", "0.16.2", PASSWORD, fail=True, return_state=True)
    assert state.is_failed()

    [failed, ok] = AuditStore.from_env().query()
    assert ok.record_id == ok.flow_run_id == record_id
    assert ok.flow_run_name == "probe-prod-to-0.16.2" and ok.flow_name == "letta-audit-probe"
    assert ok.triggered_by == "alice" and ok.outcome == "succeeded"
    assert ok.parameters == {"server": "prod", "to_version": "0.16.2", "fail": False}
    assert failed.outcome == "failed" and "forced failure" in failed.error
    with get_client(sync_client=True) as client:
        assert {"server:prod", "op:probe"} <= set(client.read_flow_run(ok.flow_run_id).tags)

    code, out, _ = _history(capsys, "--json")
    rows = json.loads(out)["records"]
    assert code == 0 and [r["outcome"] for r in rows] == ["failed", "succeeded"]
    assert rows[1]["prefect_url"].endswith(f"/runs/flow-run/{record_id}")
    code, out, _ = _history(capsys, "--outcome", "succeeded")
    assert code == 0 and "0.11.7 -> 0.16.2" in out and "alice" in out
    assert "/runs/flow-run/" in out

    # The runs' logs reach the API in batches, sent at the latest when a command exits; this
    # test reads them in the process that wrote them, so it sends what is queued first.
    APILogHandler().flush()
    code, out, _ = _history(capsys, "show", record_id[:8], "--json")
    shown = json.loads(out)
    assert shown["record"]["record_id"] == record_id
    assert [a["key"] for a in shown["prefect"]["artifacts"]] == ["probe-prod"]
    assert any("disk almost full" in log["message"] for log in shown["prefect"]["logs"])
    code, out, _ = _history(capsys, "show", record_id)
    assert code == 0 and "all good" in out and "WARNING" in out

    # Lose the local store: the JSON copies bring the same rows back.
    before = [r.model_dump(exclude={"object_key"}) for r in AuditStore.from_env().query()]
    audit_db.unlink()
    code, out, err = _history(capsys, "--rebuild", "--json")
    assert code == 0 and "loaded 2 audit record(s)" in err
    after = [r.model_dump(exclude={"object_key"}) for r in AuditStore.from_env().query()]
    assert after == before
    for path in [audit_db, *(tmp_path / "store").rglob("*.json")]:
        assert PASSWORD.encode() not in path.read_bytes()


def test_history_bad_input_is_one_sentence_and_exit_2(audit_db, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["history", "--since", "yesterday-ish"])
    assert exit_info.value.code == 2
    code, _, err = _history(capsys, "show", "no-such-run")
    assert code == 2 and "No audit record matches" in err
    now = datetime.now(UTC)
    code, _, err = _history(
        capsys, "--since", now.isoformat(), "--until", (now - timedelta(days=1)).isoformat()
    )
    assert code == 2 and "--since is after --until" in err
    monkeypatch.delenv("LETTA_OPS_STORE", raising=False)
    code, _, err = _history(capsys, "--rebuild")
    assert code == 2 and "No backup store is configured" in err
    monkeypatch.setenv("LETTA_OPS_AUDIT_URL", "nonsense://")
    code, _, err = _history(capsys)
    assert code == 2 and "not a database URL" in err


def test_show_degrades_to_one_line_without_prefect(audit_db, capsys):
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    run_id = str(uuid4())
    AuditStore.from_env().save(
        AuditRecord(
            record_id=run_id,
            flow_run_id=run_id,
            operation="backup",
            server="prod",
            outcome="succeeded",
            started_at=datetime.now(UTC),
        )
    )
    closed = "http://127.0.0.1:9/api"  # nothing listens on the discard port
    with temporary_settings({PREFECT_API_URL: closed, PREFECT_UI_URL: None}):
        code, out, _ = _history(capsys, "show", run_id)
    assert code == 0 and "backup of prod: succeeded" in out
    [line] = [line for line in out.splitlines() if line.startswith("Prefect:")]
    assert "could not be read" in line
    assert f"http://127.0.0.1:9/runs/flow-run/{run_id}" in out
