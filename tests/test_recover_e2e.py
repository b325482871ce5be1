"""kill -9 of a destructive run at its steps, then one ``letta-ops recover``: the fault matrix.

Each run is the real command line (``letta-ops upgrade`` / ``rollback``) in a process group
of its own, pointed at the session's Prefect server; the test watches the run's journal in
the audit store and kills the whole group (``kill -9``, as when a worker host dies) once the
step it aims at has begun. Then ``recover`` must leave the server either exactly as before
(agents and per-table counts equal, by the tests' own SQL and HTTP) or fully upgraded, never
in between, and the next destructive run must start at once (no waiting for a lease).

One Letta server carries every cell (each start costs ~40 s on two cores); PostgreSQL 18,
superuser. The cells, in order:

- upgrade (migrate), killed during the target's alembic migration: recover restores the
  pre-upgrade set; 0.14.0 with counts as before;
- upgrade (migrate), killed right after the server stopped: the same;
- upgrade (rebuild), killed during agent import (the database at the target's head, agents
  missing): the same;
- upgrade (rebuild), killed in the migration after the database was emptied: the same;
- upgrade (migrate), killed while the target starts: the database is at the target's head,
  recover finishes forward; 0.16.2 with every agent;
- rollback, killed during pg_restore of the target set: recover restores the pre-rollback
  safety set (0.16.2, counts as before), or finishes forward if the dump was already in;
- and a server whose process died (stale pid file, nothing answers) is rolled back from its
  database: its version from the alembic revision, a dump-only safety set.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from letta_ops.flows.backup import BackupFailed, backup
from letta_ops.flows.doctor import doctor
from letta_ops.flows.recover import RecoverReport, recover
from letta_ops.flows.rename_agents import rename_agents
from letta_ops.flows.rollback import rollback
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.kill_run import kill_when_step_begins, letta_ops
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_agents,
    sql_row_hashes,
    sql_table_columns,
    sql_table_counts,
    sql_table_digests,
)

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"


def _recover_timed() -> tuple[RecoverReport, float]:
    started = time.monotonic()
    report = recover()
    return report, round(time.monotonic() - started, 1)


def test_kill_9_at_each_step_then_one_recover(
    start_letta, s3_env, s3_bucket, monkeypatch, prefect_harness, capsys
):
    running = start_letta(FROM_VERSION, "fault")
    with running.client() as client:
        seed_agents(client, 5, prefix="fault")
    s3, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    objects = S3ObjectStore(s3, bucket, "backups")
    server, base_url, db = running.runtime.server_name, running.server.base_url, running.database
    tables_before, agents_before = sql_table_counts(db), sql_agents(db)
    digests_before, columns_before = sql_table_digests(db), sql_table_columns(db)
    rows_before, keys_before = sql_row_hashes(db), sql_row_hashes(db, keys_only=True)
    http_before = http_agents(base_url)
    audit = AuditStore.from_env()
    timings: dict[str, float] = {}

    assert recover().outcome == "nothing to recover"

    def assert_as_before() -> None:
        assert http_version(base_url) == FROM_VERSION
        assert http_agents(base_url) == http_before
        assert sql_table_counts(db) == tables_before
        assert sql_agents(db) == agents_before
        assert digest_differences(digests_before, sql_table_digests(db)) == {}

    # --- migrate, killed during the target's migration --------------------------------------
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "migrate")
    killed = kill_when_step_begins(proc, server, f"alembic upgrade to {NEW_VERSION}")
    plan = recover(dry_run=True)
    assert plan.outcome == "planned" and plan.plan.action == "restore"
    assert plan.plan.interrupted_at == f"alembic upgrade to {NEW_VERSION}"
    report, timings["migrate: during migration"] = _recover_timed()
    assert report.outcome == "recovered" and report.interrupted_run == killed
    assert_as_before()
    [record] = audit.find(killed)
    assert record.outcome == "crashed"
    assert f"during 'alembic upgrade to {NEW_VERSION}'" in record.error
    assert recover().outcome == "nothing to recover"  # idempotent

    # --- migrate, killed as the server stops -----------------------------------------------
    # The kill lands as soon as the stop begins (the cell above is the one after the stop).
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "migrate")
    kill_when_step_begins(proc, server, "stop server", 0.0)
    report, timings["migrate: during the stop"] = _recover_timed()
    assert report.plan.interrupted_at == "stop server", report
    assert report.plan.action == "restore", report
    assert_as_before()

    # --- rebuild, killed during agent import -----------------------------------------------
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "rebuild")
    killed = kill_when_step_begins(proc, server, "import agent files", 0.5)
    plan = recover(dry_run=True)
    assert plan.plan.interrupted_at == "import agent files", plan
    assert plan.plan.action == "restore", plan  # at the target's head, agents missing
    report, timings["rebuild: during agent import"] = _recover_timed()
    assert_as_before()

    # --- rebuild, killed after the database was emptied ------------------------------------
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "rebuild")
    killed = kill_when_step_begins(proc, server, f"alembic upgrade to {NEW_VERSION}", 0.5)
    report, timings["rebuild: database emptied"] = _recover_timed()
    assert report.plan.action == "restore", report
    assert_as_before()

    # --- migrate, killed while the target starts: finished forward -------------------------
    # Started at once after recover: the killed run's slot was reclaimed, no lease wait.
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "migrate")
    killed = kill_when_step_begins(proc, server, f"start {NEW_VERSION}", 2.0)
    report, timings["migrate: target starting"] = _recover_timed()
    assert report.plan.action == "finish-forward", report
    pre_upgrade = report.plan.backup_set
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == http_before
    after = sql_agents(db)
    assert {a: r.name for a, r in after.items()} == {a: r.name for a, r in agents_before.items()}
    assert all(after[a].messages >= r.messages for a, r in agents_before.items())
    # The migration kept every row: unchanged in every table whose columns it left alone
    # (but alembic_version, its own, and tools, which every start of a version upserts),
    # by primary key in the tables it changed.
    columns_after = sql_table_columns(db)
    rows_after, keys_after = sql_row_hashes(db), sql_row_hashes(db, keys_only=True)
    tables = set(columns_before) - {"alembic_version"}
    unchanged = {t for t in tables if columns_after.get(t) == columns_before[t]} - {"tools"}
    assert unchanged and {"agents", "messages"} <= tables
    changed_rows = {t: len(rows_before[t] - rows_after[t]) for t in unchanged}
    assert not any(changed_rows.values()), changed_rows
    lost_rows = {t: len(keys_before[t] - keys_after.get(t, set())) for t in tables}
    assert not any(lost_rows.values()), lost_rows
    upgraded_tables, upgraded_digests = sql_table_counts(db), sql_table_digests(db)

    # --- rollback, killed during pg_restore of the target set: back on the safety set -------
    proc = letta_ops("rollback", "--yes")
    killed = kill_when_step_begins(proc, server, "restore the set's dump", 0.0)
    report, timings["rollback: during pg_restore"] = _recover_timed()
    assert report.plan.interrupted_at == "restore the set's dump", report
    assert report.plan.action == "restore", report
    assert http_version(base_url) == NEW_VERSION  # 0.16.2, exactly as it was
    assert sql_table_counts(db) == upgraded_tables
    assert digest_differences(upgraded_digests, sql_table_digests(db)) == {}
    assert http_agents(base_url) == http_before

    # --- rollback, killed once the dump was in (its old version starting): finished --------
    proc = letta_ops("rollback", "--yes")
    killed = kill_when_step_begins(proc, server, f"start {FROM_VERSION}", 0.5)
    report, timings["rollback: old version starting"] = _recover_timed()
    assert report.plan.action == "finish-forward", report
    assert_as_before()  # 0.14.0, the pre-upgrade set's content exactly
    assert http_agents(base_url) == http_before

    # --- a server that is down is rolled back from its database ----------------------------
    # Its process killed outright: the pid file points at a dead process, nothing answers.
    version_before = http_version(base_url)
    os.kill(running.runtime.status()["pid"], signal.SIGKILL)
    time.sleep(1)
    assert not running.runtime.status().get("running")
    down_tables = sql_table_counts(db)
    report = rollback(backup_set=pre_upgrade)
    assert report.outcome == "succeeded" and report.plan.server_down
    assert report.plan.from_version == version_before  # from the alembic revision
    assert_as_before()
    manifest = load_manifest(objects, *report.safety_set.split("/"))
    assert manifest.row_counts == down_tables  # the dump of the down server, complete
    assert all(a.file is None and "server was down" in a.error for a in manifest.agents)

    # --- an agent the server cannot export: doctor names it, rename-agents fixes it ---------
    victim = next(iter(sorted(http_before)))
    with running.client() as client:
        client.update_agent(victim, {"name": "AI/ML Expert"})  # PATCH does not validate
    with pytest.raises(BackupFailed, match="AI/ML Expert"):
        backup()
    findings = {f.check: f for f in doctor(ignore=["backup-age"]).findings}
    assert findings["agent-names"].status == "action"
    assert "rename-agents --sanitize" in findings["agent-names"].fix
    plan = rename_agents()
    assert [r.model_dump(by_alias=True) for r in plan.renames] == [
        {"agent": victim, "from": "AI/ML Expert", "to": "AI-ML Expert"}
    ]
    assert http_agents(base_url)[victim] == "AI/ML Expert"  # a plan changes nothing
    done = rename_agents(execute=True)
    assert done.executed and done.backup_set
    assert http_agents(base_url)[victim] == "AI-ML Expert"
    [record, _plan] = AuditStore.from_env().query(server=server, operation="rename-agents")
    assert record.outcome == "succeeded" and record.renames == [
        r.model_dump(by_alias=True) for r in done.renames
    ]
    clean = backup()  # no --allow-partial-agents needed any more
    assert clean.agents_exported == clean.agents_total == len(http_before)

    with capsys.disabled():
        print("\nfault matrix, one recover each:")
        for cell, seconds in timings.items():
            print(f"  {cell:32s} {seconds:6.1f} s")
