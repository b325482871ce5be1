"""Backups of a real Letta 0.16.2 server with 25 agents into a real S3 endpoint (moto)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.flows.backup import BackupFailed, backup
from letta_ops.flows.verify import VerificationFailed, verify
from letta_ops.tasks.letta.agent_file import summarize_agent_file
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.runs import progress_events
from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest
from letta_ops.tasks.sets.manifest import MANIFEST_NAME
from letta_ops.tasks.sets.verification import TOC_FIRST_READ
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, rename_agent, seed_agents
from tests.fixtures.oracle import http_agents, sql_agents, sql_scalar, sql_table_counts
from tests.fixtures.s3 import make_s3_client
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

BAD_NAMES = ("AI/ML Expert", "../../etc/passwd")


@pytest.fixture(scope="session")
def server_25(start_letta):
    """A 0.16.2 server with 25 agents, two renamed through PATCH to names with '/'."""
    running = start_letta(NEW_VERSION, "backup-25")
    with running.client() as client:
        agents = seed_agents(client, 25)
        for agent, name in zip(agents, BAD_NAMES, strict=False):
            rename_agent(client, agent["id"], name)
    return running


@pytest.fixture
def backup_env(server_25, s3_env, s3_bucket, monkeypatch, prefect_harness):
    client, bucket, _ = s3_bucket
    monkeypatch.setenv("LETTA_BASE_URL", server_25.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", server_25.database.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", "prod-eu")
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    return client, bucket


def _store(client, bucket) -> S3ObjectStore:
    return S3ObjectStore(client, bucket, "backups")


def _all_keys(client, bucket) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_backup_of_25_agents(server_25, backup_env):
    client, bucket = backup_env
    state = backup(return_state=True)
    assert state.is_failed()  # two agents cannot be exported and partial was not allowed
    with pytest.raises(BackupFailed) as failure:
        state.result()
    assert "AI/ML Expert" in str(failure.value) and "--allow-partial-agents" in str(failure.value)

    store = _store(client, bucket)
    [summary] = list_backup_sets(store, "prod-eu")
    assert summary.complete and summary.verified
    manifest = load_manifest(store, "prod-eu", summary.set_id)
    live = http_agents(server_25.server.base_url)
    assert len(live) == 25
    assert {a.id: a.name for a in manifest.agents} == live
    # Letta 0.16.2 answers 500 to the export of both names with '/' (FACTS.md).
    failed = {a.name for a in manifest.failed_agents}
    assert failed == set(BAD_NAMES)
    assert all(a.error and not a.file for a in manifest.failed_agents)

    # Every other agent's file is a multi-entity agent file of exactly that agent, as the
    # database holds it: its name, its two memory blocks, every message, the schema revision.
    rows = sql_agents(server_25.database)
    revision = sql_scalar(server_25.database, "SELECT version_num FROM alembic_version")
    assert revision == manifest.alembic_revision == ALEMBIC_HEADS[NEW_VERSION]
    exported = [a for a in manifest.agents if a.file]
    for agent in exported:
        assert agent.file == f"{summary.prefix}agents/{agent.id}.af"
        data = store.read_bytes(agent.file)
        af = summarize_agent_file(data)
        assert af.multi_entity and af.name == agent.name == rows[agent.id].name
        assert af.blocks == {"persona": "p", "human": "h"}
        assert len(af.blocks) == rows[agent.id].blocks
        assert af.messages == rows[agent.id].messages > 0
        assert json.loads(data)["metadata"]["revision_id"] == revision
    assert len(exported) == 25 - len(failed) == 23
    assert {a.file for a in exported} == {
        key for key in manifest.objects if key.startswith(f"{summary.prefix}agents/")
    }

    keys = _all_keys(client, bucket)
    assert all(k.startswith(f"backups/prod-eu/{summary.set_id}/") for k in keys), keys
    assert not any("etc/passwd" in k or "AI/ML" in k for k in keys)
    assert manifest.row_counts == sql_table_counts(server_25.database)
    assert manifest.row_counts["agents"] == 25
    # Sizes for the restore's lanes: every counted table, the ones with rows not empty.
    assert set(manifest.table_bytes) == set(manifest.row_counts)
    assert manifest.table_bytes["agents"] > 0 and manifest.table_bytes["messages"] > 0
    assert manifest.letta_version == NEW_VERSION
    assert manifest.dump in manifest.objects
    assert manifest.dump_compression == "gzip:1"  # the default, recorded


def test_partial_backup_allowed_then_tamper_and_drill(server_25, backup_env):
    client, bucket = backup_env
    report = backup(allow_partial_agents=True)
    assert report.verified and report.agents_total == 25
    store = _store(client, bucket)
    set_ref = report.set

    result = verify(set_ref, drill=True)
    assert result.ok and result.drill_result.differences == []
    # S3 keeps a SHA-256 of every object: verification asks for it, --read-data reads all.
    assert result.checked.read_back == 0
    assert result.dump.bytes_read == min(report.dump_bytes, TOC_FIRST_READ)
    full = verify(set_ref, read_data=True)
    assert full.ok and full.checked.read_back == full.objects
    recorded = load_manifest(store, *set_ref.split("/")).row_counts
    assert recorded == sql_table_counts(server_25.database)
    assert result.drill_result.tables == len(recorded)

    # Flip one byte of one stored agent file, behind the store's back.
    manifest = load_manifest(store, *set_ref.split("/"))
    victim = next(a.file for a in manifest.agents if a.file)
    raw = bytearray(store.read_bytes(victim))
    raw[len(raw) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=f"backups/{victim}", Body=bytes(raw))
    state = verify(set_ref, return_state=True)
    assert state.is_failed()
    with pytest.raises(VerificationFailed) as failure:
        state.result()
    assert victim in str(failure.value)


def test_a_dump_rewritten_before_the_backups_own_verification_fails_the_set(
    server_25, backup_env, monkeypatch, audit_db
):
    """The backup's verification is a step of its run, no longer a subflow (issue #32); it
    still proves the stored bytes: a dump rewritten behind the store's back (truncated by a
    byte) after its upload and before the manifest fails the backup, the set's record says
    failed, ``latest`` never picks it, and the verify audit record, a child of the backup's
    run, says failed too."""
    import letta_ops.flows.backup as backup_flow
    from letta_ops.flows.verify import resolve_set
    from letta_ops.tasks.sets.catalog import BackupSetError
    from tests.fixtures.audit import read_audit

    client, bucket = backup_env
    truncated: list[str] = []
    runtime_files = backup_flow.store_runtime_files

    def truncate_dump_first(profile, store, prefix):
        key = f"backups/{prefix}database.dump"
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.put_object(Bucket=bucket, Key=key, Body=body[:-1])
        truncated.append(key)
        return runtime_files(profile, store, prefix)

    monkeypatch.setattr(backup_flow, "store_runtime_files", truncate_dump_first)
    state = backup(allow_partial_agents=True, return_state=True)
    assert truncated and state.is_failed()
    with pytest.raises(BackupFailed) as failure:
        state.result()
    assert "failed verification" in str(failure.value) and "database.dump" in str(failure.value)

    store = _store(client, bucket)
    [summary] = list_backup_sets(store, "prod-eu")
    assert summary.complete and not summary.verified and summary.verification == "failed"
    with pytest.raises(BackupSetError):
        resolve_set(store, "latest", "prod-eu")
    records = {r.operation: r for r in read_audit(audit_db).query()}
    backup_record, verify_record = records["backup"], records["verify"]
    assert backup_record.outcome == verify_record.outcome == "failed"
    assert verify_record.record_id == f"{backup_record.flow_run_id}-verify"
    assert verify_record.parent_flow_run_id == backup_record.flow_run_id
    assert verify_record.backup_set == backup_record.backup_set == f"prod-eu/{summary.set_id}"


def test_s3_endpoint_killed_mid_backup(server_25, s3_env, s3_bucket, monkeypatch, prefect_harness):
    _, bucket, endpoint = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("LETTA_BASE_URL", server_25.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", server_25.database.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", "killed")
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")

    class CutAfterFiveExports:
        def __init__(self):
            self.done = 0

        def start(self, label, total, unit):
            pass

        def advance(self, label, amount=1):
            if label == "export agents":
                self.done += 1
                if self.done == 5:
                    proxy.cut()

        def finish(self, label):
            pass

    progress_events.install(CutAfterFiveExports())
    try:
        state = backup(allow_partial_agents=True, return_state=True)
    finally:
        progress_events.install(None)
        proxy.resume()
    try:
        assert state.is_failed()
        direct = make_s3_client(endpoint)
        keys = _all_keys(direct, bucket)
        assert keys, "some objects were uploaded before the cut"
        assert not any(k.endswith(MANIFEST_NAME) for k in keys)
        store = _store(direct, bucket)
        [incomplete] = list_backup_sets(store, "killed")
        assert not incomplete.complete

        report = backup(allow_partial_agents=True)
        assert report.verified
        sets = list_backup_sets(store, "killed")
        assert [s.complete for s in sets] == [True, False]
    finally:
        proxy.close()


def test_cli_backup_list_verify_prune(server_25, backup_env, capsys):
    from letta_ops.cli.main import main

    client, bucket = backup_env
    assert main(["backup", "--json"]) == 1  # two agents cannot be exported
    assert "--allow-partial-agents" in capsys.readouterr().err
    assert main(["backup", "--allow-partial-agents", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["agents_total"] == 25 and report["verified"]
    # The command started the dump before importing Prefect, and the run took it over.
    phases = [p["name"] for p in report["phases"]]
    assert phases[0] == "dump before the run" and "counts+dump+upload" in phases

    assert main(["backups", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["sets"]
    assert len(listed) == 2 and listed[0]["set"] == report["set"]
    assert all(row["complete"] and row["verified"] for row in listed)

    assert main(["verify", "latest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["set"] == report["set"]

    policy = [
        "--keep-last",
        "1",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
        "--json",
    ]
    assert main(["prune", *policy]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["keep"], plan["delete"], plan["deleted"]) == (1, 1, [])
    assert len(list_backup_sets(_store(client, bucket), "prod-eu")) == 2  # plan deletes nothing

    assert main(["prune", *policy, "--execute"]) == 0
    assert len(json.loads(capsys.readouterr().out)["deleted"]) == 1
    [kept] = list_backup_sets(_store(client, bucket), "prod-eu")
    assert f"{kept.server}/{kept.set_id}" == report["set"]

    assert main(["verify", "prod-eu/20200101T000000Z-nothere"]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_postgres_restarted_mid_backup(server_25, tmp_path, monkeypatch, prefect_harness):
    """PostgreSQL restarted while pg_dump streams: the backup fails with one sentence and
    leaves no set with a manifest; the next backup, once PostgreSQL is back, is complete.

    The database is a copy of ``server_25``'s in a cluster of its own (restarting the
    session's cluster would cut every other test's server), with ~300 MB of rows more so
    the dump lasts long enough to be cut; the server is down (a dump-only backup), so
    nothing but PostgreSQL is involved.
    """
    import subprocess
    import threading
    import time

    from letta_ops.tasks.postgres.letta_schema import connect, create_database
    from letta_ops.tasks.store.local import LocalObjectStore
    from tests.fixtures.postgres import _start_cluster

    cluster = _start_cluster("letta-ops-pgrestart-")
    try:
        copy = LettaDatabase(uri=cluster.uri("letta_copy"))
        create_database(copy, with_pgvector=False)
        dump = tmp_path / "source.dump"
        bin_dir = cluster.bin_dir
        source = server_25.database.letta_pg_uri()
        subprocess.run([bin_dir / "pg_dump", "-Fc", "-f", dump, "-d", source], check=True)
        subprocess.run(
            [bin_dir / "pg_restore", "--no-owner", "-d", copy.letta_pg_uri(), dump], check=True
        )
        with connect(copy, autocommit=True) as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE bulk_history AS SELECT g AS id, "
                    "repeat(md5(g::text) || md5(random()::text), 4) AS payload "
                    "FROM generate_series(1, 1000000) g"
                )
            )
        monkeypatch.setenv("LETTA_OPS_EXTRA_TABLES", "bulk_history")  # not Letta's: named
        monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:9")  # nothing answers
        monkeypatch.setenv("LETTA_PG_URI", copy.letta_pg_uri())
        monkeypatch.setenv("LETTA_OPS_SERVER_NAME", "pg-restarted")
        monkeypatch.setenv("LETTA_OPS_STORE", f"file://{tmp_path / 'store'}")

        restarted = threading.Event()

        def restart_while_dumping() -> None:
            admin = LettaDatabase(uri=cluster.uri("postgres"))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with connect(admin, autocommit=True) as conn:
                    copying = conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE "
                            "application_name = 'pg_dump' AND query ILIKE 'COPY%bulk_history%'"
                        )
                    ).scalar()
                if copying:
                    cluster.stop()
                    cluster.start()
                    restarted.set()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=restart_while_dumping, daemon=True)
        watcher.start()
        state = backup(server_down_ok=True, allow_partial_agents=True, return_state=True)
        watcher.join(timeout=120)
        assert restarted.is_set(), "the dump finished before PostgreSQL could be restarted"
        assert state.is_failed()
        with pytest.raises(BackupFailed) as failure:
            state.result()
        message = str(failure.value)
        assert "\n" not in message.strip() and "Traceback" not in message
        assert "pg_dump" in message, message
        assert "terminating connection" in message or "server closed" in message, message
        store = LocalObjectStore(tmp_path / "store")
        # The aborted upload left nothing that counts: no set with a manifest.
        assert not [s for s in list_backup_sets(store, "pg-restarted") if s.complete]

        report = backup(server_down_ok=True, allow_partial_agents=True)  # PostgreSQL is back
        assert report.verified
        assert [s.complete for s in list_backup_sets(store, "pg-restarted")] == [True]
    finally:
        cluster.remove()


def test_exports_in_flight_never_exceed_the_configured_bound(server_25, backup_env, monkeypatch):
    """LETTA_OPS_EXPORT_CONCURRENCY=2: the real exports of 25 agents overlap, two at a time and
    never three (each held 50 ms after its real request, so a wider pool would show)."""
    import threading
    import time

    from letta_ops.tasks.letta.api import LettaClient

    real_export = LettaClient.export_agent
    lock, state = threading.Lock(), {"now": 0, "most": 0, "calls": 0}

    def counted_export(self, agent_id: str) -> bytes:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["calls"] += 1
        try:
            data = real_export(self, agent_id)
            time.sleep(0.05)
            return data
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(LettaClient, "export_agent", counted_export)
    monkeypatch.setenv("LETTA_OPS_EXPORT_CONCURRENCY", "2")
    report = backup(allow_partial_agents=True)
    assert state["calls"] == 25 and report.agents_exported == 23  # the two '/' names fail
    assert state["most"] == 2


def test_a_set_written_with_the_old_default_gzip_6_still_restores(
    server_25, backup_env, pg_cluster
):
    """The default became gzip:1; sets written before say gzip:6 in their manifest and must
    restore, byte for byte of every table, with today's code."""
    from letta_ops.flows.steps.restore_server import restore_database_from_set
    from letta_ops.tasks.postgres.letta_schema import create_database, drop_database
    from tests.fixtures.oracle import digest_differences, sql_table_digests

    client, bucket = backup_env
    report = backup(allow_partial_agents=True, compression="gzip:6")
    store = _store(client, bucket)
    manifest = load_manifest(store, *report.set.split("/"))
    assert manifest.dump_compression == "gzip:6"
    target = LettaDatabase(uri=pg_cluster.uri("old_gzip6_restored"), reset_mode="recreate")
    create_database(target)
    try:
        restored = restore_database_from_set(target, store, manifest, 2)
        assert restored["count_differences"] == []
        before = sql_table_digests(server_25.database)
        assert digest_differences(before, sql_table_digests(target)) == {}
    finally:
        drop_database(target)


def test_unchanged_agents_are_reused_a_changed_one_exported_again(
    server_25, backup_env, monkeypatch, capsys
):
    """Issue #32: a second backup of an unchanged server exports nothing through the API (each
    file copied from the first set, checked, encrypted again); a block edited through Letta's
    API makes the next backup export exactly that agent; --full-exports reuses none."""
    import base64
    import secrets

    from letta_ops.cli.main import main
    from letta_ops.tasks.sets.authentication import open_repository

    key = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", key)
    client, bucket = backup_env
    store = open_repository(_store(client, bucket), environ={"LETTA_OPS_ENCRYPTION_KEY": key})

    def files(report) -> dict[str, bytes]:
        manifest = load_manifest(store, *report.set.split("/"))
        return {a.id: store.read_bytes(a.file) for a in manifest.agents if a.file}

    first = backup(allow_partial_agents=True)
    assert first.verified and first.agents_exported == 23 and first.agents_reused == 0
    manifest = load_manifest(store, *first.set.split("/"))
    assert all(a.fingerprint and a.reused_from is None for a in manifest.agents)
    first_files = files(first)

    second = backup(allow_partial_agents=True)
    assert second.verified and second.agents_exported == second.agents_reused == 23
    assert files(second) == first_files  # the same bytes, under the new set's own names
    reused = load_manifest(store, *second.set.split("/"))
    first_id = first.set.split("/")[1]
    assert {a.reused_from for a in reused.agents if a.file} == {first_id}
    assert all(a.file.startswith(f"prod-eu/{reused.set_id}/") for a in reused.agents if a.file)
    assert "fingerprints+parent" in [p.name for p in second.phases]

    edited = next(a for a in manifest.agents if a.file)
    with server_25.client() as letta:
        path = f"/v1/agents/{edited.id}/core-memory/blocks/persona"
        letta.request("PATCH", path, json={"value": "p, edited"})
        try:
            third = backup(allow_partial_agents=True)
        finally:
            letta.request("PATCH", path, json={"value": "p"})
    assert third.verified and (third.agents_exported, third.agents_reused) == (23, 22)
    changed = load_manifest(store, *third.set.split("/"))
    assert [a.id for a in changed.agents if a.file and a.reused_from is None] == [edited.id]
    assert summarize_agent_file(files(third)[edited.id]).blocks["persona"] == "p, edited"

    assert main(["backup", "--allow-partial-agents", "--full-exports", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["verified"] and (full["agents_exported"], full["agents_reused"]) == (23, 0)
