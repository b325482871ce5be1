"""The audit history of real runs: a backup, a failed (rolled back) and a successful upgrade
of a real Letta 0.11.7 server, with S3 (moto) and a Prefect server."""

from __future__ import annotations

import json

import pytest

from letta_ops.cli.main import main
from letta_ops.flows.backup import backup
from letta_ops.flows.steps.upgrade_steps import UpgradeFailed
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.audit.store import AuditStore
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, seed_agents
from tests.fixtures.prefect import flow_run_artifacts

pytestmark = pytest.mark.e2e

API_KEY = "letta-api-key-Kn0wn-e2e"


def _history(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _top_level(records):
    return [r.model_dump(exclude={"object_key"}) for r in records if not r.parent_flow_run_id]


def test_history_of_backup_failed_upgrade_and_upgrade(
    start_letta, pg_cluster, s3_env, s3_bucket, monkeypatch, prefect_harness, audit_db, capsys
):
    client, bucket, _ = s3_bucket
    running = start_letta(OLD_VERSION, "audit-e2e")
    with running.client() as letta:
        seed_agents(letta, 3, prefix="audited")
    password = pg_cluster.password  # the database role's real password, in LETTA_PG_URI
    assert password in running.database.letta_pg_uri()
    monkeypatch.setenv("LETTA_BASE_URL", running.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", running.database.letta_pg_uri())
    monkeypatch.setenv("LETTA_API_KEY", API_KEY)
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", "audit-e2e")
    monkeypatch.setenv("LETTA_OPS_STATE_DIR", str(running.runtime.state_dir.parent))
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    monkeypatch.setenv("LETTA_OPS_OPERATOR", "e2e-operator")

    backup_report = backup()
    # Fault: the target gets 3 s to become healthy after its migration (it needs ~40 s).
    state = upgrade(NEW_VERSION, strategy="migrate", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed, match="rollback restored"):
        state.result()
    report = upgrade(NEW_VERSION, strategy="migrate")
    assert report.outcome == "succeeded"

    code, out, _ = _history(capsys, "--json")
    assert code == 0
    rows = json.loads(out)["records"]
    assert [(r["operation"], r["outcome"]) for r in rows] == [
        ("upgrade", "succeeded"),
        ("upgrade", "failed"),
        ("backup", "succeeded"),
    ]
    ok, failed, backed_up = rows
    assert backed_up["versions_from"] == OLD_VERSION and backed_up["versions_to"] is None
    assert backed_up["backup_set"] == backup_report.set
    assert backed_up["counts_before"]["agents"] == 3
    for run in (ok, failed):
        assert (run["versions_from"], run["versions_to"]) == (OLD_VERSION, NEW_VERSION)
        assert run["backup_set"].startswith("audit-e2e/") and run["counts_before"]["agents"] == 3
    assert failed["rollback_outcome"].startswith("succeeded") and "UpgradeFailed" in failed["error"]
    assert failed["counts_after"]["tables"] == failed["counts_before"]["tables"]
    assert ok["counts_after"]["agents"] == 3 and ok["rollback_outcome"] is None
    assert all(r["triggered_by"] == "e2e-operator" and r["server"] == "audit-e2e" for r in rows)
    assert all(r["prefect_url"].endswith(f"/runs/flow-run/{r['flow_run_id']}") for r in rows)
    assert all(r["flow_run_name"] == f"upgrade-audit-e2e-to-{NEW_VERSION}" for r in rows[:2])

    # With --subflows the two pre-upgrade backups appear beside the first one, each under the
    # upgrade that started it, with the set that upgrade recorded.
    code, out, _ = _history(capsys, "--subflows", "--operation", "backup")
    assert code == 0 and len(out.splitlines()) == 1 + 3  # header + three backups
    code, out, _ = _history(capsys, "--subflows", "--operation", "backup", "--json")
    backups = json.loads(out)["records"]
    assert code == 0
    assert sorted(
        (b["parameters"]["purpose"], b["parent_flow_run_id"] or "", b["backup_set"])
        for b in backups
    ) == sorted(
        [
            ("scheduled", "", backed_up["backup_set"]),
            ("pre-upgrade", failed["flow_run_id"], failed["backup_set"]),
            ("pre-upgrade", ok["flow_run_id"], ok["backup_set"]),
        ]
    )
    assert all(b["details"]["purpose"] == b["parameters"]["purpose"] for b in backups)
    code, out, _ = _history(capsys, "show", failed["flow_run_id"])
    assert code == 0 and "rollback_outcome" in out and "Prefect artifacts" in out

    # The known secrets appear nowhere: the store, the JSON records, the Prefect artifacts.
    secrets = (password.encode(), API_KEY.encode())
    assert not any(s in audit_db.read_bytes() for s in secrets)
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    audit_keys = [k for k in keys if "/audit/" in k]
    # 3 runs + 2 pre-upgrade backups + 3 verifies, each once, each where its record says.
    records = AuditStore.from_env().query()
    assert len(records) == len(audit_keys) == 8
    assert sorted(audit_keys) == sorted(f"backups/{r.object_key}" for r in records)
    assert sorted(r.operation for r in records) == ["backup"] * 3 + ["upgrade"] * 2 + ["verify"] * 3
    for key in audit_keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not any(s in body for s in secrets), key
        stored = json.loads(body)
        assert key == f"backups/{stored['object_key']}"
        assert stored["server"] == "audit-e2e" and stored["outcome"] in ("succeeded", "failed")
    artifacts = flow_run_artifacts(r.flow_run_id for r in records if r.flow_run_id)
    dumped = json.dumps([a.model_dump(mode="json") for a in artifacts]).encode()
    assert not any(s in dumped for s in secrets)

    # Every run published its report under its own flow run: a markdown summary keyed by
    # operation and server (and a table for backups and the successful upgrade).
    by_run: dict[str, dict[str, str]] = {}
    for artifact in artifacts:
        if artifact.key is None:
            continue  # Prefect's own record of a persisted result (a failed run's exception)
        if str(artifact.flow_run_id) in {r.flow_run_id for r in records}:
            by_run.setdefault(str(artifact.flow_run_id), {})[artifact.key] = artifact.data
    assert set(by_run) == {r.flow_run_id for r in records}
    # A backup's verification is a step of the backup's run (issue #32): its record is the
    # run's child, RUN_ID-verify, and its report is published under the backup's run.
    verifies = [r for r in records if r.operation == "verify"]
    backup_runs = {r.flow_run_id for r in records if r.operation == "backup"}
    assert {(r.record_id, r.parent_flow_run_id) for r in verifies} == {
        (f"{run}-verify", run) for run in backup_runs
    }
    for record in records:
        published = by_run[record.flow_run_id]
        markdown = published[f"{record.operation}-audit-e2e"]
        tables = set()
        if record.operation in ("backup", "verify"):
            tables = {"backup-audit-e2e-table", "backup-audit-e2e", "verify-audit-e2e"}
        if record.flow_run_id == ok["flow_run_id"]:
            tables = {"upgrade-audit-e2e-table"}
        assert set(published) == {f"{record.operation}-audit-e2e", *tables}, record.operation
        if record.operation == "backup":
            assert markdown.startswith(f"# Backup {record.backup_set}\n")
            assert "agents exported: **3 of 3**" in markdown
        if record.operation == "verify":
            assert markdown.startswith(f"# Verify {record.backup_set}: passed\n")
    failed_report = by_run[failed["flow_run_id"]]["upgrade-audit-e2e"]
    assert f"{OLD_VERSION} -> {NEW_VERSION} (migrate): **failed, rolled back**" in failed_report
    assert f"pre-upgrade backup set: {failed['backup_set']}" in failed_report
    assert "- rollback: succeeded" in failed_report
    ok_report = by_run[ok["flow_run_id"]]["upgrade-audit-e2e"]
    assert "(migrate): **succeeded**" in ok_report and ok["backup_set"] in ok_report

    # Lose the local store: the JSON records in S3 bring the same rows back.
    before = AuditStore.from_env().query()
    audit_db.unlink()
    code, out, err = _history(capsys, "--rebuild", "--json")
    assert code == 0 and f"loaded {len(before)} audit record(s)" in err
    assert [r["record_id"] for r in json.loads(out)["records"]] == [r["record_id"] for r in rows]
    assert _top_level(AuditStore.from_env().query()) == _top_level(before)
