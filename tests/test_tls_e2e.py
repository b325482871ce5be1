"""The TLS-only cell of the matrix: real PostgreSQL 18 (hostssl SCRAM only, hostnossl reject,
a private CA), real Letta 0.14.0 -> 0.16.2 whose own connections and migrations run on
``sslmode=verify-full``, letta-ops connecting with verify-full.

One server for the module, its phases in order: backup + drill; ``restore SET --database``
with verify-full and with require (counts and agents equal to the set's by the tests' own SQL);
a wrong CA and ``sslmode=disable`` refused in one sentence with nothing changed; an upgrade
(migrate) whose target fails to start, rolled back automatically; the upgrade; a rollback.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from letta_ops.flows.backup import backup
from letta_ops.flows.rollback import rollback
from letta_ops.flows.steps.upgrade_steps import UpgradeFailed
from letta_ops.flows.upgrade import upgrade
from letta_ops.flows.verify import verify
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.postgres.letta_schema import alembic_revision, connect, create_database
from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, seed_agents
from tests.fixtures.oracle import http_agents, http_version, sql_agents, sql_table_counts
from tests.fixtures.tls_postgres import new_database_name

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"


@pytest.fixture(scope="module")
def tls_letta(pg_tls_cluster, start_letta):
    """Letta 0.14.0 on a verify-full URI of the TLS-only cluster, migrated by letta-ops
    (its pg8000 alembic through verify-full), with 4 agents; stopped when the module ends."""
    db = pg_tls_cluster.database(new_database_name("letta_tls"))
    create_database(db)
    running = start_letta(FROM_VERSION, "tls-server", database=db)
    with running.client() as client:
        seed_agents(client, 4, prefix="tls")
    yield running
    running.runtime.stop()


@pytest.fixture
def tls_env(tls_letta, pg_tls_cluster, s3_env, s3_bucket, monkeypatch, prefect_harness):
    client, bucket, _ = s3_bucket
    monkeypatch.setenv("LETTA_BASE_URL", tls_letta.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", tls_letta.database.uri.get_secret_value())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", tls_letta.runtime.server_name)
    monkeypatch.setenv("LETTA_OPS_STATE_DIR", str(tls_letta.runtime.state_dir.parent))
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    monkeypatch.setenv("LETTA_OPS_PG_BIN", str(pg_tls_cluster.bin_dir))
    monkeypatch.setenv("PGPASSWORD", pg_tls_cluster.cluster.password)
    return S3ObjectStore(client, bucket, "backups")


def _empty_database(pg_tls_cluster, prefix: str):
    db = pg_tls_cluster.database(new_database_name(prefix))
    create_database(db)
    return db


def _target_uri(pg_tls_cluster, db, mode: str = "verify-full", ca=None) -> str:
    return pg_tls_cluster.uri(db.database_name, mode=mode, ca=ca, password=False)


def _letta_sessions_encrypted(db) -> tuple[int, int]:
    """(sessions on ``db`` other than this one, of which encrypted), from pg_stat_ssl."""
    with connect(db) as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a "
                "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() "
                "AND a.pid <> pg_backend_pid()"
            )
        ).one()
    return int(row[0]), int(row[1])


def test_tls_only_cell(tls_letta, tls_env, pg_tls_cluster, capsys, monkeypatch):
    from letta_ops.cli.main import main

    store = tls_env
    live = tls_letta.database
    base_url = tls_letta.server.base_url
    assert http_version(base_url) == FROM_VERSION
    # The server works on a cluster that rejects every plaintext TCP connection: it is on TLS
    # (its sessions, when it holds any, are all encrypted).
    sessions, encrypted = _letta_sessions_encrypted(live)
    assert encrypted == sessions
    agents_before = sql_agents(live)
    counts_before = sql_table_counts(live)
    assert len(agents_before) == 4

    # --- backup + drill over verify-full ---------------------------------------------------
    report = backup()
    assert report.verified, report
    manifest = load_manifest(store, tls_letta.runtime.server_name, report.set.split("/")[1])
    assert manifest.row_counts == counts_before
    drilled = verify(report.set, drill=True)
    assert drilled.ok and drilled.drill_result.differences == [], drilled

    # --- restore SET --database, verify-full then require (--force over the first) ---------
    target = _empty_database(pg_tls_cluster, "tls_target")
    assert main(["restore", report.set, "--database", _target_uri(pg_tls_cluster, target)]) == 0
    capsys.readouterr()
    assert sql_table_counts(target) == manifest.row_counts
    assert sql_agents(target) == agents_before
    args = ["restore", report.set, "--database", _target_uri(pg_tls_cluster, target, "require")]
    assert main([*args, "--force", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "succeeded"
    assert sql_table_counts(target) == manifest.row_counts

    # --- a wrong CA, then sslmode=disable: one sentence each, nothing changed ----------------
    with connect(target, autocommit=True) as conn:
        conn.execute(sa.text("DELETE FROM agents WHERE name = 'tls-00'"))
    counts_target = sql_table_counts(target)
    wrong = _target_uri(pg_tls_cluster, target, ca=pg_tls_cluster.wrong_ca_cert)
    for uri, sentence in (
        (wrong, "certificate was not accepted"),
        (_target_uri(pg_tls_cluster, target, "disable"), "requires TLS"),
    ):
        assert main(["restore", report.set, "--database", uri, "--force", "--yes"]) != 0
        err = capsys.readouterr().err.strip()
        assert sentence in err and f"127.0.0.1:{pg_tls_cluster.port}" in err, err
        assert len(err.splitlines()) == 1, err
        assert pg_tls_cluster.cluster.password not in err
        assert sql_table_counts(target) == counts_target
    assert sql_table_counts(live) == counts_before

    # --- upgrade (migrate) whose target never becomes healthy: rolled back automatically ---
    state = upgrade(NEW_VERSION, strategy="migrate", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed, match="rollback restored"):
        state.result()
    assert http_version(base_url) == FROM_VERSION
    assert sql_agents(live) == agents_before
    assert sql_table_counts(live) == counts_before
    assert alembic_revision(live) == ALEMBIC_HEADS[FROM_VERSION]

    # --- the upgrade, the server and its migrations on verify-full ---------------------------
    upgraded = upgrade(NEW_VERSION, strategy="migrate")
    assert upgraded.outcome == "succeeded", upgraded
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == {a: row.name for a, row in agents_before.items()}
    assert sql_agents(live) == agents_before
    assert alembic_revision(live) == ALEMBIC_HEADS[NEW_VERSION]
    sessions, encrypted = _letta_sessions_encrypted(live)
    assert encrypted == sessions

    # --- rollback to the pre-upgrade set ------------------------------------------------------
    # Two pre-upgrade sets (the failed run's and this one's): the newest is this upgrade's.
    sets = list_backup_sets(store, tls_letta.runtime.server_name)
    pre = max((s for s in sets if s.purpose == "pre-upgrade"), key=lambda s: s.set_id)
    rolled = rollback(backup_set=f"{pre.server}/{pre.set_id}")
    assert rolled.outcome == "succeeded", rolled
    assert http_version(base_url) == FROM_VERSION
    assert sql_agents(live) == agents_before
    assert alembic_revision(live) == ALEMBIC_HEADS[FROM_VERSION]
