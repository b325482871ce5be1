"""The Supabase-shaped cell, with a real Letta server: letta-ops touches only Letta's objects.

PostgreSQL 18; Letta's role owns its database only (NOSUPERUSER NOCREATEDB); an admin created
pgvector in schema ``extensions`` (on the database's search_path, as Supabase does); schemas
``auth`` and ``storage`` hold the platform's tables with rows, and the operator's own
``public.app_notes`` (100 rows, made by Letta's role) sits beside Letta's tables. Through a
backup and its drill, a migrate upgrade 0.14.0 -> 0.16.2, a rollback to the pre-upgrade set
(reset in place) and a restore in place onto a second such database, the rows of
``auth``/``storage``/``app_notes`` are unchanged (the tests' own SQL: counts and content
digests, before and after each step), and no dump holds any of them.

One server, one module: a Letta start costs ~40 s on two cores.
"""

from __future__ import annotations

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.flows.backup import backup
from letta_ops.flows.restore import restore
from letta_ops.flows.rollback import rollback
from letta_ops.flows.upgrade import upgrade
from letta_ops.flows.verify import verify
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.sets.verification import read_dump_toc
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import http_agents, http_version, sql_agents, sql_table_counts
from tests.fixtures.postgres import owner_database
from tests.fixtures.shared_database import share_database, toc_mentions, untouched_digests

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
#: What every plan must name as left alone: exactly the operator's and the platform's.
LEFT_ALONE = [
    "sequence public.app_notes_id_seq",
    "table public.app_notes",
    "schema auth (3 objects)",
    "schema storage (1 objects)",
]


def _supabase_shaped(cluster, prefix: str) -> tuple[LettaDatabase, LettaDatabase]:
    """Letta's role's connection and the admin's, to a new Supabase-shaped database."""
    role = owner_database(cluster, prefix, pgvector_schema="extensions")
    admin = LettaDatabase(uri=cluster.uri(role.database_name))
    share_database(admin, role)
    return role, admin


def _letta_tables(db: LettaDatabase) -> dict[str, int]:
    return {t: n for t, n in sql_table_counts(db).items() if t != "app_notes"}


def test_supabase_shaped_cell_keeps_what_is_not_lettas(
    pg_cluster, start_letta, s3_env, s3_bucket, monkeypatch, prefect_harness
):
    database, admin = _supabase_shaped(pg_cluster, "supa")
    running = start_letta(FROM_VERSION, "supabase-cell", database=database)
    base_url = running.server.base_url
    with running.client() as client:
        seed_agents(client, 3, prefix="supa")
    s3, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    store = S3ObjectStore(s3, bucket, "backups")
    untouched = untouched_digests(admin)
    assert untouched["public.app_notes"][0] == 100 and untouched["auth.users"][0] == 25
    letta_before, agents_before, http_before = (
        _letta_tables(database),
        sql_agents(database),
        http_agents(base_url),
    )
    assert len(http_before) == 3 and letta_before["agents"] == 3

    def dump_toc(set_ref: str) -> list[str]:
        manifest = load_manifest(store, *set_ref.split("/"))
        size = manifest.objects[manifest.dump].size
        return read_dump_toc(store, manifest.dump, size, database.bin_dir())[0]

    # --- backup: Letta's schema only; and its drill in a dedicated Supabase-shaped database --
    set_ref = backup().set
    manifest = load_manifest(store, *set_ref.split("/"))
    assert manifest.left_out == LEFT_ALONE
    assert manifest.pgvector_schema == "extensions"
    assert set(manifest.row_counts) == set(letta_before)
    assert toc_mentions(dump_toc(set_ref)) == []
    assert untouched_digests(admin) == untouched
    drill_database, drill_admin = _supabase_shaped(pg_cluster, "supadrill")
    drill_untouched = untouched_digests(drill_admin)
    monkeypatch.setenv("LETTA_OPS_DRILL_PG_URI", drill_database.letta_pg_uri())
    drilled = verify(set_ref, drill=True).drill_result
    assert drilled.in_place and drilled.differences == []
    assert drilled.tables == len(letta_before)
    assert _letta_tables(drill_database) == {}  # emptied after
    assert untouched_digests(drill_admin) == drill_untouched
    monkeypatch.delenv("LETTA_OPS_DRILL_PG_URI")

    # --- the migrate upgrade ----------------------------------------------------------------
    upgraded = upgrade(NEW_VERSION, strategy="migrate")
    assert upgraded.outcome == "succeeded"
    assert upgraded.plan.reset_mode == "in-place" and upgraded.plan.left_alone == LEFT_ALONE
    assert http_version(base_url) == NEW_VERSION and http_agents(base_url) == http_before
    assert untouched_digests(admin) == untouched
    added = sorted(set(_letta_tables(database)) - set(letta_before))
    assert added, "0.16.2's migrations add tables (Letta's: a rollback must drop them)"
    pre_upgrade = upgraded.backup_set
    assert toc_mentions(dump_toc(pre_upgrade)) == []

    # --- rollback to the pre-upgrade set: reset in place, the newer tables go, the rest stays
    planned = rollback(dry_run=True).plan
    assert planned.reset_mode == "in-place" and planned.left_alone == LEFT_ALONE
    rolled = rollback()
    assert rolled.outcome == "succeeded" and rolled.plan.set == pre_upgrade
    assert http_version(base_url) == FROM_VERSION and http_agents(base_url) == http_before
    assert _letta_tables(database) == letta_before
    assert sql_agents(database) == agents_before
    assert untouched_digests(admin) == untouched
    assert toc_mentions(dump_toc(rolled.safety_set)) == []

    # --- restore in place onto a second Supabase-shaped database (--force) ------------------
    other, other_admin = _supabase_shaped(pg_cluster, "supaother")
    other_untouched = untouched_digests(other_admin)
    parts = other.parts
    monkeypatch.setenv("PGPASSWORD", str(parts["password"]))
    uri = f"postgresql://{parts['user']}@127.0.0.1:{parts['port']}/{parts['database']}"
    restored = restore(pre_upgrade, uri, force=True)
    assert restored.outcome == "succeeded" and not restored.count_differences
    assert restored.plan.reset_mode == "in-place" and restored.plan.left_alone == LEFT_ALONE
    assert _letta_tables(other) == letta_before
    assert sql_agents(other) == agents_before
    assert untouched_digests(other_admin) == other_untouched
    assert untouched_digests(admin) == untouched
