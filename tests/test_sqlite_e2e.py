"""Letta 0.11.7 on SQLite (``HOME/.letta/sqlite.db``, the pip default) through letta-ops'
process runtime, with agents named as real databases hold them (``Café Ñandú``,
``AI/ML Expert``). Every state is read back with the tests' own ``sqlite3`` queries
(tests/fixtures/sqlite_oracle.py), never with the product's.

One server carries the story (each Letta start costs ~40 s on two cores): backup, drill,
restore onto a second Letta home (and the targets it refuses: a non-empty file without
--force, the live server's own file, a PostgreSQL database), kill -9 of a restore onto a third
+ recover, rollback, kill -9 + recover.
Cells: engine SQLite; runtime letta-ops' process runtime; Letta 0.11.7; store S3 (moto).
"""

from __future__ import annotations

import sqlite3
import time

import psutil
import pytest

from letta_ops.flows.backup import backup
from letta_ops.flows.doctor import doctor
from letta_ops.flows.recover import recover
from letta_ops.flows.restore import restore
from letta_ops.flows.rollback import rollback
from letta_ops.flows.verify import verify
from letta_ops.tasks.letta.api import offline_agent_body
from letta_ops.tasks.sets.admission import BackupSetRefused
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.sqlite.database import SqliteDatabase
from letta_ops.tasks.sqlite.restore_target import SqliteTargetRefused, sqlite_target_name
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.kill_run import kill_when_step_begins, letta_ops
from tests.fixtures.oracle import sql_execute
from tests.fixtures.oracle import sql_table_digests as pg_table_digests
from tests.fixtures.sqlite_letta import SQLITE_AGENT_NAMES, SQLITE_VERSION
from tests.fixtures.sqlite_oracle import (
    REWRITTEN_AT_START,
    sqlite_agent_messages,
    sqlite_agents,
    sqlite_table_counts,
    sqlite_table_digests,
)

pytestmark = pytest.mark.e2e

SERVER = "sqlite-prod"


def _counts_line(label: str, counts: dict[str, int], agents: dict[str, str]) -> str:
    busy = {t: n for t, n in sorted(counts.items()) if n}
    return f"{label}: {len(agents)} agents, {sum(counts.values())} rows, per table {busy}"


def test_sqlite_server_backed_up_restored_rolled_back_killed_and_recovered(
    sqlite_letta_copy,
    start_sqlite_letta,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    make_database,
    pg_cluster,
):
    path = sqlite_letta_copy.path
    stored = sqlite_agents(path)
    assert sorted(stored.values()) == sorted(SQLITE_AGENT_NAMES)
    assert all(count > 0 for count in sqlite_agent_messages(path).values())

    # The process runtime serves the very file the profile names, with no PostgreSQL variable.
    started = time.monotonic()
    running = start_sqlite_letta(SERVER)
    print(f"\nLetta {SQLITE_VERSION} on SQLite healthy in {time.monotonic() - started:.1f} s")
    status = running.runtime.status()
    assert status["running"] and status["health"]["version"] == SQLITE_VERSION
    environment = psutil.Process(status["pid"]).environ()
    assert not [name for name in environment if name.startswith("LETTA_PG")]
    assert environment["HOME"] == str(sqlite_letta_copy.server_home)
    with running.client() as client:
        assert {a["id"]: a["name"] for a in client.list_agents()} == stored
        created = client.create_agent(offline_agent_body("written-before-backup"))
    assert sqlite_agents(path)[created["id"]] == "written-before-backup"

    # backup while it runs: the online copy, agent files, the manifest, verified from S3.
    s3, bucket, _ = s3_bucket
    monkeypatch.setenv("LETTA_BASE_URL", running.server.base_url)
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", sqlite_letta_copy.uri)
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", SERVER)
    monkeypatch.setenv("LETTA_OPS_STATE_DIR", str(running.runtime.state_dir.parent))
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    monkeypatch.delenv("LETTA_PG_URI", raising=False)
    counts, digests, agents = (
        sqlite_table_counts(path),
        sqlite_table_digests(path),
        sqlite_agents(path),
    )
    stable = sqlite_table_digests(path, REWRITTEN_AT_START)
    print(_counts_line("before backup", counts, agents))
    started = time.monotonic()
    report = backup(allow_partial_agents=True)
    print(f"backup {report.set} in {time.monotonic() - started:.1f} s: {report.rows} rows")
    print(f"agents without an agent file: {sorted(a.name for a in report.agents_failed)}")
    assert report.verified
    # 0.11.7 fails to export names outside its ASCII rule; the copy holds them all the same.
    assert {a.name for a in report.agents_failed} <= {"Café Ñandú", "AI/ML Expert"}
    assert report.agents_exported == len(agents) - len(report.agents_failed) >= 3
    store = S3ObjectStore(s3, bucket, "backups")
    manifest = load_manifest(store, SERVER, report.set.split("/")[1])
    assert manifest.engine == "sqlite" and manifest.postgres_version is None
    assert manifest.row_counts == counts
    assert {a.id: a.name for a in manifest.agents} == agents
    assert sqlite_table_counts(path) == counts  # the backup changed nothing in the live file
    copy = path.parent.parent / "downloaded.db"
    store.download_to(manifest.dump, copy)
    assert sqlite_table_digests(copy) == digests  # content, every row of every table

    started = time.monotonic()
    drilled = verify(report.set, drill=True)
    print(f"verify + drill in {time.monotonic() - started:.1f} s")
    assert drilled.ok and drilled.sqlite_copy.integrity == ["ok"]
    assert drilled.sqlite_copy.tables == len(counts)
    assert drilled.drill_result.differences == []

    # restore onto a second Letta home: downloaded beside it, checked, renamed into place;
    # the live server's file untouched.
    second = sqlite_letta_copy.server_home.parent / "second" / ".letta" / "sqlite.db"
    live_digests = sqlite_table_digests(path)
    planned = restore(report.set, sqlite=str(second), dry_run=True)
    assert planned.outcome == "planned" and planned.plan.tables == len(counts)
    assert not planned.plan.replaces_existing and not second.parent.parent.exists()
    started = time.monotonic()
    restored = restore(report.set, sqlite=str(second))
    print(f"restore onto a second SQLite file in {time.monotonic() - started:.1f} s")
    assert restored.outcome == "succeeded" and restored.plan.engine == "sqlite"
    assert restored.plan.target == str(second) and not restored.plan.start
    assert sqlite_table_digests(second) == digests  # content, every row of every table
    assert sqlite_agents(second) == agents
    assert sorted(p.name for p in second.parent.iterdir()) == ["sqlite.db"]
    assert sqlite_table_digests(path) == live_digests
    # Again without --force: the file now holds tables and is left as it was.
    second_bytes = second.read_bytes()
    with pytest.raises(SqliteTargetRefused, match="pass --force"):
        restore(report.set, sqlite=str(second))
    # The live server's own file: a rollback's job (it takes a safety backup), even forced.
    with pytest.raises(SqliteTargetRefused, match="live database of server"):
        restore(report.set, force=True)
    # A PostgreSQL target for this SQLite set: refused before the database is touched.
    marker = make_database("sqlite_restore_refused")
    sql_execute(marker, "CREATE TABLE operator_notes (note text)")
    sql_execute(marker, "INSERT INTO operator_notes VALUES ('keep me')")
    marker_before = pg_table_digests(marker)
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    uri = f"postgresql://{pg_cluster.superuser}@127.0.0.1:{pg_cluster.port}/{marker.database_name}"
    with pytest.raises(BackupSetRefused, match="holds a sqlite database"):
        restore(report.set, uri, force=True)
    assert pg_table_digests(marker) == marker_before
    assert second.read_bytes() == second_bytes
    assert sqlite_table_digests(path) == live_digests

    # kill -9 of a forced restore onto a third home while it waits to replace that file
    # (another process reads it: the checkpoint before the rename waits), then recover from
    # the file's own profile: the copy is put in place again, the download beside it gone.
    third = sqlite_letta_copy.server_home.parent / "third" / ".letta" / "sqlite.db"
    third.parent.mkdir(parents=True)
    holder = sqlite3.connect(third, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE operator_notes (note text)")
    holder.execute("BEGIN")  # a reader on the WAL: the swap's checkpoint waits for it
    holder.execute("SELECT count(*) FROM operator_notes").fetchone()
    try:
        proc = letta_ops("restore", report.set, "--sqlite", str(third), "--force", "--yes")
        third_name = sqlite_target_name(SqliteDatabase(path=third))
        killed = kill_when_step_begins(proc, third_name, "restore the set's dump", 1.0)
    finally:
        holder.rollback()
        holder.close()
    print(f"at the kill: {sorted(p.name for p in third.parent.iterdir())}")
    assert sqlite_table_counts(third) == {"operator_notes": 0}  # the old file, whole
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(third))
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", third_name)
    started = time.monotonic()
    recovered = recover()
    print(f"recover of the killed restore in {time.monotonic() - started:.1f} s")
    assert recovered.interrupted_run == killed and recovered.plan.action == "restore"
    assert recovered.outcome == "recovered" and recovered.result.ok
    assert sqlite_table_digests(third) == digests
    assert sorted(p.name for p in third.parent.iterdir()) == ["sqlite.db"]
    assert recover().outcome == "nothing to recover"
    assert sqlite_table_digests(path) == live_digests
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", sqlite_letta_copy.uri)
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", SERVER)

    # Change the data through the API: a new agent, a rename, a deletion.
    kept, renamed, deleted = sorted(agents)[:3]
    with running.client() as client:
        client.create_agent(offline_agent_body("written-after-backup"))
        client.update_agent(renamed, {"name": "renamed-after-backup"})
        client.delete_agent(deleted)
    changed = sqlite_table_counts(path)
    print(_counts_line("changed after backup", changed, sqlite_agents(path)))
    assert changed != counts and deleted not in sqlite_agents(path)

    # rollback to the set: the server stopped, the copy put back atomically, 0.11.7 started.
    started = time.monotonic()
    rolled = rollback(backup_set=report.set)
    print(
        f"rollback in {time.monotonic() - started:.1f} s "
        f"(downtime {rolled.downtime_seconds} s), safety set {rolled.safety_set}"
    )
    after = sqlite_table_counts(path)
    print(_counts_line("after rollback", after, sqlite_agents(path)))
    assert rolled.outcome == "succeeded" and rolled.verification.ok
    assert after == counts
    assert sqlite_agents(path) == agents
    assert sqlite_table_digests(path, REWRITTEN_AT_START) == stable
    status = running.runtime.status()
    assert status["running"] and status["health"]["version"] == SQLITE_VERSION
    with running.client() as client:
        assert {a["id"]: a["name"] for a in client.list_agents()} == agents
    leftovers = [p.name for p in path.parent.iterdir() if "letta-ops" in p.name]
    assert leftovers == []
    # The safety set holds the state the rollback replaced, the deleted agent gone.
    safety = load_manifest(store, SERVER, rolled.safety_set.split("/")[1])
    assert safety.row_counts == changed and deleted not in {a.id for a in safety.agents}

    # kill -9 of a second rollback (forward to the safety set) as it stops the server, then
    # recover: a SQLite file has no alembic revision, so the run is undone, never finished.
    proc = letta_ops("rollback", "--to", rolled.safety_set, "--yes")
    killed = kill_when_step_begins(proc, SERVER, "stop server", 0.3)
    print(_counts_line("at the kill", sqlite_table_counts(path), sqlite_agents(path)))
    started = time.monotonic()
    recovered = recover()
    print(
        f"recover in {time.monotonic() - started:.1f} s: {recovered.plan.action} "
        f"{recovered.plan.backup_set} (interrupted at {recovered.plan.interrupted_at!r})"
    )
    print(_counts_line("after recover", sqlite_table_counts(path), sqlite_agents(path)))
    assert recovered.outcome == "recovered" and recovered.interrupted_run == killed
    assert recovered.plan.action == "restore" and recovered.result.ok
    assert sqlite_table_counts(path) == counts
    assert sqlite_agents(path) == agents
    assert sqlite_table_digests(path, REWRITTEN_AT_START) == stable
    with running.client() as client:
        assert client.health()["version"] == SQLITE_VERSION
        assert {a["id"]: a["name"] for a in client.list_agents()} == agents
    assert recover().outcome == "nothing to recover"

    # doctor: the SQLite checks in place of PostgreSQL's.
    findings = {f.check: f for f in doctor().findings}
    assert findings["sqlite-file"].status == "ok"
    assert findings["sqlite-wal"].status == "ok"
    assert findings["sqlite-version"].status == "ok"
    assert findings["alembic"].status == "skipped" and "database-uri" in findings
