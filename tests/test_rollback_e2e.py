"""Rollback, restore and agent restore on one real Letta server, 0.11.7 <-> 0.16.2.

One server carries the whole story (each Letta start costs ~40 s on two cores): upgrade it,
add an agent, restore a deleted agent from a set, refuse a tampered set, roll back to the
pre-upgrade set, roll "forward" to the safety set, then restore a set onto other databases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from letta_ops.cli.main import main
from letta_ops.flows.backup import backup
from letta_ops.flows.reports.rollback import RollbackReport
from letta_ops.flows.restore import restore, restored_runtime
from letta_ops.flows.restore_agents import restore_agents
from letta_ops.flows.rollback import RollbackFailed, rollback
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.errors import EXIT_BAD_INPUT, EXIT_OK
from letta_ops.tasks.letta.agent_file import summarize_agent_file
from letta_ops.tasks.letta.api import offline_agent_body
from letta_ops.tasks.postgres.embedded import free_loopback_port
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.postgres.restore_target import RestoreTargetRefused, port_in_use
from letta_ops.tasks.sets.admission import BackupSetRefused
from letta_ops.tasks.sets.agent_restore import AgentRestoreRefused
from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_agents,
    sql_table_counts,
    sql_table_digests,
)

pytestmark = pytest.mark.e2e


class Phases:
    """Prints how long each phase took, so the suite's budget stays visible."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.last = time.monotonic()
        self.capsys = capsys

    def done(self, name: str) -> None:
        now = time.monotonic()
        with self.capsys.disabled():
            print(f"\n[{now - self.last:6.1f} s] {name}")
        self.last = now


@pytest.fixture
def point_at(s3_env, s3_bucket, monkeypatch, prefect_harness):
    """Point the flows at a running server and a fresh bucket, as an operator's env would."""
    client, bucket, _ = s3_bucket

    def point(running):
        for name, value in operator_env(running, f"s3://{bucket}/backups").items():
            monkeypatch.setenv(name, value)
        return S3ObjectStore(client, bucket, "backups")

    return point, client, bucket


def _live(running) -> dict[str, str]:
    """The agents over HTTP, by the tests' own oracle (not letta-ops' client)."""
    return http_agents(running.server.base_url)


def _version_and_pid(running) -> tuple[str, int]:
    return http_version(running.server.base_url), running.runtime.status()["pid"]


def test_rollback_forward_agent_restore_and_restore_elsewhere(
    start_letta, point_at, make_database, pg_cluster, monkeypatch, capsys
):
    point, s3, bucket = point_at
    phases = Phases(capsys)
    running = start_letta(OLD_VERSION, "rb-e2e")
    with running.client() as client:
        seed_agents(client, 4, prefix="rb")
    store = point(running)
    before_agents = _live(running)
    before_counts = sql_table_counts(running.database)
    before_rows = sql_agents(running.database)
    before_digests = sql_table_digests(running.database)  # content, not only counts
    assert len(before_agents) == len(before_rows) == before_counts["agents"] == 4
    phases.done("0.11.7 started with 4 agents")

    # --- upgrade 0.11.7 -> 0.16.2 (migrate), then add an agent on 0.16.2 ---------------------
    upgraded = upgrade(NEW_VERSION, strategy="migrate", lock_timeout_seconds=30)
    assert upgraded.outcome == "succeeded"
    pre_upgrade = upgraded.backup_set
    with running.client() as client:
        added = client.create_agent(offline_agent_body("added-on-0162"))
    phases.done("upgraded to 0.16.2, agent added")

    # --- last night's set; restore one deleted agent from it -------------------------------
    nightly = backup(purpose="scheduled").set
    nightly_manifest = load_manifest(store, *nightly.split("/"))
    victim_id, victim_name = next(iter(sorted(before_agents.items())))
    exported = summarize_agent_file(
        store.read_bytes(next(a.file for a in nightly_manifest.agents if a.id == victim_id))
    )
    with running.client() as client:
        client.delete_agent(victim_id)
    assert victim_id not in _live(running)

    report = restore_agents(nightly, [victim_name])
    [row] = report.agents
    assert row.ok and row.restored_as == victim_name and row.new_id != victim_id
    with running.client() as client:
        back = client.get_agent(row.new_id)
    blocks = back.get("memory", {}).get("blocks") or back.get("blocks")
    assert {b["label"]: b["value"] for b in blocks} == exported.blocks
    restored = sql_agents(running.database)[row.new_id]
    assert restored.name == victim_name
    assert restored.messages == exported.messages > 0
    assert restored.blocks == len(exported.blocks)

    # beside the live agent, as a copy; refused without --as-copy
    with pytest.raises(AgentRestoreRefused, match="already called"):
        restore_agents(nightly, [victim_id])
    copy = restore_agents(nightly, ["added-on-0162"], as_copy=True).agents[0]
    assert copy.restored_as.startswith("added-on-0162 restored ") and copy.ok
    phases.done("deleted agent restored from the nightly set, and a copy beside a live one")

    # --- a tampered set is refused before anything is stopped ------------------------------
    version_before, pid_before = _version_and_pid(running)
    dump_key = f"backups/{nightly}/database.dump"
    body = bytearray(s3.get_object(Bucket=bucket, Key=dump_key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=dump_key, Body=bytes(body))
    assert main(["rollback", "--to", nightly, "--yes"]) == EXIT_BAD_INPUT
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "fails its checksums" in line and "database.dump" in line
    with pytest.raises(BackupSetRefused, match="fails its checksums.*database.dump"):
        rollback(backup_set=nightly)
    assert _version_and_pid(running) == (version_before, pid_before)
    assert not [s for s in list_backup_sets(store) if s.purpose == "pre-rollback"]
    phases.done("tampered set refused, server untouched")

    # --- roll back to the pre-upgrade set (the default) ------------------------------------
    capsys.readouterr()
    assert main(["rollback", "--dry-run", "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["set"] == pre_upgrade and plan["to_version"] == OLD_VERSION
    assert "added-on-0162" in plan["agents_not_in_set"]
    # What it will lose, in numbers: the three agents created since the set, by name, and
    # at least their rows (the tests' own SQL), shown in the confirmation too.
    created_since = sorted([victim_name, "added-on-0162", copy.restored_as])
    assert plan["agents_created_since_set"] == created_since
    new_rows = [r for r in sql_agents(running.database).values() if r.name in created_since]
    written = plan["written_since_set"]
    assert set(written) == {"messages", "agents", "blocks", "passages"}
    assert written["agents"] >= 3 and written["blocks"] >= sum(r.blocks for r in new_rows)
    assert written["messages"] >= sum(r.messages for r in new_rows) > 0
    assert main(["rollback", "--dry-run"]) == EXIT_OK
    shown = capsys.readouterr().out
    assert f"written since the set (lost, kept in the safety backup): {written['messages']} " in (
        shown
    )
    assert "agents created since the set: " + ", ".join(created_since) in shown
    assert _version_and_pid(running) == (version_before, pid_before)

    before_rollback = _live(running)
    digests_before_rollback = sql_table_digests(running.database)
    # Confirmed at a terminal: one flow run computes the plan, shows it, and executes it (no
    # dry run first). Answered "no", nothing stops; answered "yes", the same run rolls back.
    audit = AuditStore.from_env()
    runs_before = len(audit.query(operation="rollback"))
    answers = iter(["n", "y"])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    capsys.readouterr()
    assert main(["rollback", "--json"]) == EXIT_BAD_INPUT
    asked = capsys.readouterr().err
    assert pre_upgrade in asked  # the plan, shown before the question
    assert "cancelled; nothing was changed" in asked
    assert _version_and_pid(running) == (version_before, pid_before)
    [cancelled] = audit.query(operation="rollback")[
        : len(audit.query(operation="rollback")) - runs_before
    ]
    assert cancelled.outcome == "refused"
    assert main(["rollback", "--json"]) == EXIT_OK
    report = RollbackReport.model_validate(json.loads(capsys.readouterr().out))
    assert report.outcome == "succeeded", report
    assert len(audit.query(operation="rollback")) == runs_before + 2  # one run per command
    assert http_version(running.server.base_url) == OLD_VERSION
    assert _live(running) == before_agents
    target = load_manifest(store, *pre_upgrade.split("/"))
    assert sql_table_counts(running.database) == target.row_counts == before_counts
    assert sql_agents(running.database) == before_rows
    assert digest_differences(before_digests, sql_table_digests(running.database)) == {}
    safety = load_manifest(store, *report.safety_set.split("/"))
    assert safety.purpose == "pre-rollback" and safety.pinned
    assert safety.letta_version == NEW_VERSION
    assert {a.id: a.name for a in safety.agents} == before_rollback
    assert added["id"] in {a.id for a in safety.agents}
    phases.done("rolled back to 0.11.7 with exactly the pre-upgrade agents and counts")

    # --- roll "forward" by restoring the safety set ----------------------------------------
    forward = rollback(backup_set=report.safety_set)
    assert forward.outcome == "succeeded", forward
    assert http_version(running.server.base_url) == NEW_VERSION
    assert _live(running) == before_rollback
    assert sql_table_counts(running.database) == safety.row_counts
    assert digest_differences(digests_before_rollback, sql_table_digests(running.database)) == {}
    phases.done("rolled forward to 0.16.2 from the safety set")

    # --- a rollback that fails after the stop undoes itself --------------------------------
    # Fault: 0.11.7 gets 3 s to become healthy, after its dump was already restored.
    forward_counts = sql_table_counts(running.database)
    forward_rows = sql_agents(running.database)
    forward_digests = sql_table_digests(running.database)
    with pytest.raises(RollbackFailed, match="undo restored Letta 0.16.2"):
        rollback(backup_set=pre_upgrade, start_timeout_seconds=3)
    assert http_version(running.server.base_url) == NEW_VERSION
    assert _live(running) == before_rollback
    assert sql_table_counts(running.database) == forward_counts
    assert sql_agents(running.database) == forward_rows
    assert digest_differences(forward_digests, sql_table_digests(running.database)) == {}
    phases.done("failed rollback undone: 0.16.2 with the same agents and counts")

    # --- restore a set onto another database -----------------------------------------------
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)

    def uri_without_password(db) -> str:
        return f"postgresql://{pg_cluster.superuser}@127.0.0.1:{pg_cluster.port}/{db}"

    busy = make_database("rb_busy")
    with connect(busy, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE keep_me (id int)"))
    with pytest.raises(RestoreTargetRefused, match="already holds 1 tables.*--force"):
        restore(pre_upgrade, uri_without_password(busy.database_name))
    with connect(busy) as conn:
        assert conn.execute(sa.text("SELECT to_regclass('keep_me')")).scalar()
    with pytest.raises(RestoreTargetRefused, match="live database"):
        restore(pre_upgrade, uri_without_password(running.database.database_name), force=True)

    empty = make_database("rb_staging")
    port = free_loopback_port()
    try:
        staged = restore(
            pre_upgrade, uri_without_password(empty.database_name), start=True, port=port
        )
        assert staged.outcome == "succeeded" and not staged.count_differences
        assert staged.verification.ok and staged.server.version == OLD_VERSION
        assert sql_table_counts(empty) == target.row_counts
        assert sql_agents(empty) == before_rows
        # Content as before, but the one row a server started in a HOME of its own rewrites
        # as it starts (its local sandbox configuration; same count).
        staged_differences = digest_differences(before_digests, sql_table_digests(empty))
        assert set(staged_differences) <= {"sandbox_configs"}, staged_differences
        assert http_agents(f"http://127.0.0.1:{port}") == before_agents
        # One home per server: the next command finds it from its URL alone.
        assert staged.address_with.LETTA_OPS_SERVER_NAME == f"127.0.0.1-{port}"
        restored_env = {**os.environ, "LETTA_BASE_URL": f"http://127.0.0.1:{port}"}
        restored_env.pop("LETTA_OPS_SERVER_NAME", None)
        status = subprocess.run(
            [sys.executable, "-m", "letta_ops.cli", "runtime", "status", "--json"],
            env=restored_env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == staged.server.pid
        stopped = subprocess.run(
            [sys.executable, "-m", "letta_ops.cli", "runtime", "stop", "--json"],
            env=restored_env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert json.loads(stopped.stdout)["stopped"], stopped.stderr
        assert not port_in_use("127.0.0.1", port)
    finally:
        restored_runtime(None, port).stop()
    phases.done(
        "restore onto another database: refused when busy; started, agents and counts equal"
    )
