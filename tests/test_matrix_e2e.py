"""Every destructive path on the databases operators run: PostgreSQL 16 and 18, as a
superuser and as an owner-only role (NOSUPERUSER NOCREATEDB, pgvector created once by an
admin, as on RDS, Cloud SQL, Azure or Supabase).

One real Letta server per cell carries the whole story (a Letta start costs ~40 s on two
cores): backup and restore drill; a role refused before anything stops; an upgrade
0.14.0 -> 0.16.2 that fails after the stop and rolls itself back; an upgrade killed with
``kill -9`` during its migration, then ``letta-ops recover``; the migrate upgrade (no
password in any process's argv meanwhile); rollback to the pre-upgrade set; the rebuild
upgrade; ``restore --force`` onto another database. PostgreSQL 18 as a superuser is the
other e2e files' cell.

Every before/after comparison uses the tests' own oracle (``tests.fixtures.oracle``): plain
SQL per table and per agent, and agents listed over HTTP, never the functions the flows
verify themselves with.
"""

from __future__ import annotations

import time

import pytest

from letta_ops.cli.main import main
from letta_ops.flows.backup import backup
from letta_ops.flows.recover import recover
from letta_ops.flows.rehearse import RehearsalFailed, rehearse
from letta_ops.flows.restore import restore
from letta_ops.flows.rollback import rollback
from letta_ops.flows.steps.upgrade_steps import UpgradeFailed
from letta_ops.flows.upgrade import upgrade
from letta_ops.flows.verify import verify
from letta_ops.tasks.errors import EXIT_BAD_INPUT
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.postgres.privileges import PrivilegeRefused
from letta_ops.tasks.sets.catalog import list_backup_sets
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.kill_run import kill_when_step_begins, letta_ops
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_agent_contents,
    sql_agents,
    sql_execute,
    sql_scalar,
    sql_table_counts,
    sql_table_digests,
)
from tests.fixtures.postgres import owner_database
from tests.fixtures.process_table import ArgvWatch

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
CELLS = [(16, "superuser"), (16, "owner"), (18, "owner")]
#: The cell that also rehearses both strategies on a copy (in the dedicated drill database).
REHEARSAL_CELL = (18, "owner")


@pytest.mark.parametrize("major,role", CELLS, ids=[f"pg{m}-{r}" for m, r in CELLS])
def test_destructive_paths_hold_on_cell(
    major,
    role,
    pg_clusters,
    make_database,
    start_letta,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    capsys,
):
    cluster = pg_clusters(major)
    owner = role == "owner"

    def new_database(prefix: str):
        return owner_database(cluster, prefix) if owner else make_database(prefix, cluster=cluster)

    database = new_database("cell")
    running = start_letta(FROM_VERSION, f"cell-pg{major}-{role}", database=database)
    base_url = running.server.base_url
    with running.client() as client:
        seed_agents(client, 6, prefix=f"pg{major}")
    s3, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    store = S3ObjectStore(s3, bucket, "backups")
    tables_before = sql_table_counts(database)
    agents_before = sql_agents(database)
    digests_before = sql_table_digests(database)  # content, not only counts
    contents_before = sql_agent_contents(database)
    http_before = http_agents(base_url)
    assert len(http_before) == 6 and tables_before["agents"] == 6
    assert sum(a.messages for a in agents_before.values()) > 0

    # --- backup and restore drill -----------------------------------------------------------
    set_ref = backup().set
    if owner:
        # No scratch database for a NOCREATEDB role: refused with the way out.
        with pytest.raises(PrivilegeRefused, match="cannot create one.*LETTA_OPS_DRILL_PG_URI"):
            verify(set_ref, drill=True)
        drill_database = owner_database(cluster, "drill")
        monkeypatch.setenv("LETTA_OPS_DRILL_PG_URI", drill_database.letta_pg_uri())
    drilled = verify(set_ref, drill=True).drill_result
    assert drilled.differences == [] and drilled.tables == len(tables_before)
    if owner:  # LETTA_OPS_DRILL_PG_URI honoured: restored there in place, emptied after
        assert drilled.scratch_database == drill_database.database_name
        assert drilled.in_place and sql_table_counts(drill_database) == {}
        monkeypatch.delenv("LETTA_OPS_DRILL_PG_URI")

    # --- a path the role may not take is refused before anything stops ----------------------
    pid = running.runtime.status()["pid"]
    if owner:
        capsys.readouterr()
        code = main(["upgrade", "--to", NEW_VERSION, "--yes", "--reset", "recreate"])
        assert code == EXIT_BAD_INPUT
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "NOCREATEDB" in error and "CREATEDB" in error and "{" not in error
        assert http_version(base_url) == FROM_VERSION
        assert running.runtime.status()["pid"] == pid
        assert not [s for s in list_backup_sets(store) if s.purpose == "pre-upgrade"]

    # --- an upgrade that fails after the stop puts everything back --------------------------
    # Fault: the migrated target gets 3 s to become healthy (it needs ~40 s).
    state = upgrade(NEW_VERSION, strategy="migrate", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed, match="at step start 0.16.2.*rollback restored"):
        state.result()
    assert http_version(base_url) == FROM_VERSION
    assert http_agents(base_url) == http_before
    assert sql_table_counts(database) == tables_before
    assert sql_agents(database) == agents_before
    assert digest_differences(digests_before, sql_table_digests(database)) == {}

    # --- rehearsals on a copy (this cell: the drill database, reset in place) --------------
    rehearsing = (major, role) == REHEARSAL_CELL
    if rehearsing:
        monkeypatch.setenv("LETTA_OPS_DRILL_PG_URI", drill_database.letta_pg_uri())
        pid = running.runtime.status()["pid"]
        started = time.monotonic()
        rehearsed = rehearse(NEW_VERSION, strategy="migrate")
        span = time.monotonic() - started
        assert rehearsed.outcome == "succeeded" and 0 < rehearsed.downtime_seconds < span
        assert [s.step for s in rehearsed.downtime_steps][0] == "stop server"
        assert all(r.messages_after >= r.messages_before for r in rehearsed.verification)
        new_tables = sorted(set(rehearsed.counts_after) - set(rehearsed.counts_before))
        assert new_tables, "0.16.2's migrations add tables"
        plan = upgrade(NEW_VERSION, strategy="migrate", dry_run=True).plan
        assert plan.expected_downtime_seconds == rehearsed.downtime_seconds
        assert plan.expected_downtime_source.startswith("measured by the rehearsal")
        started = time.monotonic()
        rehearsed_rebuild = rehearse(NEW_VERSION, strategy="rebuild", from_set=rehearsed.source_set)
        span = time.monotonic() - started
        assert rehearsed_rebuild.outcome == "succeeded"
        assert 0 < rehearsed_rebuild.downtime_seconds < span
        assert rehearsed_rebuild.not_carried is not None

        # A rehearsal made to fail: a table the target's migration creates already exists.
        sql_execute(database, f"CREATE TABLE {new_tables[0]} (id int)")
        tables_with_stray = sql_table_counts(database)
        state = rehearse(NEW_VERSION, strategy="migrate", return_state=True)
        assert state.is_failed()
        with pytest.raises(RehearsalFailed, match="already exists.*server was not touched"):
            state.result()
        assert http_version(base_url) == FROM_VERSION  # production: untouched
        assert running.runtime.status()["pid"] == pid
        assert sql_table_counts(database) == tables_with_stray
        assert http_agents(base_url) == http_before
        sql_execute(database, f"DROP TABLE {new_tables[0]}")
        assert sql_table_counts(database) == tables_before and sql_agents(database) == agents_before
        assert digest_differences(digests_before, sql_table_digests(database)) == {}
        assert sql_table_counts(drill_database) == {}  # the copy is gone
        monkeypatch.delenv("LETTA_OPS_DRILL_PG_URI")

    # --- kill -9 of an upgrade during its migration, then one recover ----------------------
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "migrate")
    killed = kill_when_step_begins(
        proc, running.runtime.server_name, f"alembic upgrade to {NEW_VERSION}"
    )
    recovered = recover()
    assert recovered.outcome == "recovered" and recovered.interrupted_run == killed
    assert recovered.plan.action == "restore"
    assert http_version(base_url) == FROM_VERSION
    assert http_agents(base_url) == http_before
    assert sql_table_counts(database) == tables_before
    assert sql_agents(database) == agents_before
    assert digest_differences(digests_before, sql_table_digests(database)) == {}

    # --- the migrate upgrade (at once: the killed run's slot was reclaimed), with no password
    # in any process's argv ------------------------------------------------------------------
    password = database.parts["password"]
    with ArgvWatch(str(password), cluster.password) as watch:
        started = time.monotonic()
        report = upgrade(NEW_VERSION, strategy="migrate")
        span = time.monotonic() - started
    assert report.outcome == "succeeded"
    # Measured, not compared with the rehearsal's (wall clocks on a shared host): the
    # downtime is positive and inside the run that measured it.
    assert 0 < report.downtime_seconds < span
    assert report.plan.reset_mode == ("in-place" if owner else "recreate")
    if rehearsing:  # the rehearsal's measure against the real one
        measured, real = rehearsed.downtime_seconds, report.downtime_seconds
        with capsys.disabled():
            print(f"\nmigrate downtime: rehearsal {measured} s, real upgrade {real} s")
    assert watch.samples > 20 and {"alembic", "letta"} <= watch.commands_seen
    assert watch.hits == []
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == http_before
    after = sql_agents(database)
    for agent_id, old in agents_before.items():
        assert after[agent_id].name == old.name
        assert after[agent_id].messages >= old.messages and after[agent_id].blocks == old.blocks
    assert (
        sql_scalar(database, "SELECT version_num FROM alembic_version")
        == ALEMBIC_HEADS[NEW_VERSION]
    )
    pre_upgrade = report.backup_set

    if owner:  # rollback and restore, too, refuse a way the role may not take, before the stop
        pid = running.runtime.status()["pid"]
        with pytest.raises(PrivilegeRefused, match="NOCREATEDB"):
            rollback(reset="recreate")
        capsys.readouterr()
        assert main(["rollback", "--yes", "--reset", "recreate"]) == EXIT_BAD_INPUT
        assert "ALTER ROLE" in capsys.readouterr().err
        assert http_version(base_url) == NEW_VERSION
        assert running.runtime.status()["pid"] == pid
        assert not [s for s in list_backup_sets(store) if s.purpose == "pre-rollback"]

    # --- rollback to the pre-upgrade set ----------------------------------------------------
    rolled = rollback()
    assert rolled.outcome == "succeeded" and rolled.plan.set == pre_upgrade
    assert rolled.plan.reset_mode == ("in-place" if owner else "recreate")
    assert http_version(base_url) == FROM_VERSION
    assert http_agents(base_url) == http_before
    assert sql_table_counts(database) == tables_before
    assert sql_agents(database) == agents_before
    assert digest_differences(digests_before, sql_table_digests(database)) == {}

    # --- the rebuild upgrade (agent files; lossy by nature: compared per agent) -------------
    started = time.monotonic()
    rebuilt = upgrade(NEW_VERSION, strategy="rebuild")
    span = time.monotonic() - started
    assert rebuilt.outcome == "succeeded" and 0 < rebuilt.downtime_seconds < span
    if rehearsing:
        measured, real = rehearsed_rebuild.downtime_seconds, rebuilt.downtime_seconds
        with capsys.disabled():
            print(f"\nrebuild downtime: rehearsal {measured} s, real upgrade {real} s")
    assert http_version(base_url) == NEW_VERSION
    assert sorted(http_agents(base_url).values()) == sorted(http_before.values())
    assert sorted(a.name for a in sql_agents(database).values()) == sorted(http_before.values())
    # Per agent, by the tests' own SQL: its messages (role, text) and memory blocks came across.
    carried = {n: c.carried() for n, c in contents_before.items()}
    assert {n: c.carried() for n, c in sql_agent_contents(database).items()} == carried

    # --- restore --force really replaces another database -----------------------------------
    other = new_database("other")
    sql_execute(other, "CREATE TABLE keep_me (id int)")
    parts = other.parts
    monkeypatch.setenv("PGPASSWORD", str(parts["password"]))
    uri = f"postgresql://{parts['user']}@127.0.0.1:{parts['port']}/{parts['database']}"
    if owner:
        with pytest.raises(PrivilegeRefused, match="NOCREATEDB"):
            restore(pre_upgrade, uri, force=True, reset="recreate")
        assert sql_scalar(other, "SELECT to_regclass('keep_me') IS NOT NULL")
    restored = restore(pre_upgrade, uri, force=True)
    assert restored.outcome == "succeeded"
    # keep_me is not Letta's: the target is reset in place, never recreated (that would drop
    # it), and it stays; Letta's tables are the set's.
    assert restored.plan.reset_mode == "in-place"
    assert restored.plan.left_alone == ["table public.keep_me"]
    assert sql_scalar(other, "SELECT to_regclass('keep_me') IS NOT NULL")
    restored_counts = sql_table_counts(other)
    assert restored_counts.pop("keep_me") == 0
    assert restored_counts == tables_before
    assert sql_agents(other) == agents_before
    restored_digests = sql_table_digests(other)
    assert restored_digests.pop("keep_me") == "0:"  # the operator's table, left as it was
    assert digest_differences(digests_before, restored_digests) == {}
