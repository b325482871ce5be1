"""A database Letta shares (Supabase-shaped): letta-ops dumps, drops and restores Letta's
objects only.

Real PostgreSQL 18 and the real pg_dump/pg_restore; an owner-only role (NOSUPERUSER
NOCREATEDB) with pgvector created by an admin in schema ``extensions``, schemas ``auth`` and
``storage`` with rows, and the operator's ``public.app_notes`` (100 rows) beside a Letta-shaped
schema. Every "unchanged" is the tests' own SQL: row counts and content digests
(``tests.fixtures.shared_database``). The same cell with a real Letta server, through backup,
upgrade, rollback and restore: ``tests/test_shared_database_e2e.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.postgres.client_tools import PgToolError
from letta_ops.tasks.postgres.dump import dump_to_store, list_dump
from letta_ops.tasks.postgres.letta_schema import (
    ResetRefused,
    connect,
    create_database,
    drop_database,
    empty_database,
)
from letta_ops.tasks.postgres.privileges import PrivilegeRefused, restore_plan
from letta_ops.tasks.postgres.restore import restore_dump
from letta_ops.tasks.store.locations import open_store
from tests.fixtures.oracle import sql_execute, sql_scalar, sql_table_counts
from tests.fixtures.postgres import owner_database
from tests.fixtures.shared_database import share_database, toc_mentions, untouched_digests

#: Letta-shaped: Letta's own table names, its free-standing sequence, one of its enums, a
#: vector column (pgvector's type found through the database's search_path, as Letta does).
LETTA_SCHEMA = (
    "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('b1c2d3e4f5a6')",
    "CREATE SEQUENCE message_seq_id",
    "CREATE TYPE sandboxtype AS ENUM ('E2B', 'LOCAL')",
    "CREATE TABLE agents (id text PRIMARY KEY, name text NOT NULL, sandbox sandboxtype)",
    "CREATE TABLE messages (id text PRIMARY KEY, agent_id text REFERENCES agents(id), "
    "sequence_id bigint NOT NULL DEFAULT nextval('message_seq_id'), embedding vector(3))",
    "INSERT INTO agents SELECT 'agent-' || i, 'Agent ' || i, 'LOCAL' FROM generate_series(1, 4) i",
    "INSERT INTO messages (id, agent_id, embedding) SELECT 'm-' || i, 'agent-' || (i % 4 + 1), "
    "'[1,2,3]' FROM generate_series(1, 30) i",
)
LETTA_COUNTS = {"alembic_version": 1, "agents": 4, "messages": 30}


def _shared(cluster, prefix: str) -> tuple[LettaDatabase, LettaDatabase]:
    """The role's connection and the admin's, to a Supabase-shaped database."""
    role = owner_database(cluster, prefix, pgvector_schema="extensions")
    admin = LettaDatabase(uri=cluster.uri(role.database_name))
    share_database(admin, role)
    for statement in LETTA_SCHEMA:
        sql_execute(role, statement)
    return role, admin


def _letta_counts(db: LettaDatabase) -> dict[str, int]:
    return {t: n for t, n in sql_table_counts(db).items() if t != "app_notes"}


def test_dump_reset_and_restore_touch_only_lettas_objects(pg_cluster, tmp_path: Path):
    role, admin = _shared(pg_cluster, "shared")
    # The operator's function: its definition rides along in the dump (pg_dump cannot leave
    # it out), the reset keeps it, and the restore must not try to create it again.
    sql_execute(
        role,
        "CREATE FUNCTION note_count() RETURNS bigint LANGUAGE sql "
        "AS 'SELECT count(*) FROM public.app_notes'",
    )
    untouched = untouched_digests(admin)
    assert untouched["public.app_notes"][0] == 100
    assert _letta_counts(role) == LETTA_COUNTS

    # The dump: Letta's schema, Letta's tables; nothing of auth, storage, app_notes.
    store = open_store(f"file://{tmp_path}")
    dumped = dump_to_store(role, store, "s/database.dump")
    dump_path = tmp_path / "s" / "database.dump"
    assert dumped.row_counts == LETTA_COUNTS
    assert dumped.pgvector_schema == "extensions"
    assert {"table public.app_notes", "sequence public.app_notes_id_seq"} <= set(dumped.left_out)
    assert {"schema auth (3 objects)", "schema storage (1 objects)"} <= set(dumped.left_out)
    toc = list_dump(role.bin_dir(), dump_path)
    assert any(" TABLE DATA public messages " in line for line in toc)
    assert toc_mentions(toc) == []

    # A table a newer Letta created after the set (an upgrade's): Letta's, so it goes too.
    sql_execute(role, "CREATE TABLE conversations (id text PRIMARY KEY)")
    sql_execute(role, "INSERT INTO conversations VALUES ('c-1')")

    plan = restore_plan(role)
    assert plan["reset_mode"] == "in-place"
    assert "table public.app_notes" in plan["left_alone"]
    assert "schema auth (3 objects)" in plan["left_alone"]
    empty_database(role, plan["reset_mode"], also_tables=dumped.row_counts)
    assert sql_table_counts(role) == {"app_notes": 100}
    assert sql_scalar(role, "SELECT to_regclass('message_seq_id')") is None
    assert sql_scalar(role, "SELECT to_regtype('sandboxtype')") is None
    assert untouched_digests(admin) == untouched
    vector_schema = (
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    )
    assert sql_scalar(role, vector_schema) == "extensions"

    assert sql_scalar(role, "SELECT note_count()") == 100
    restore_dump(role, dump_path, jobs=2)
    assert _letta_counts(role) == LETTA_COUNTS
    assert untouched_digests(admin) == untouched
    assert sql_scalar(role, "SELECT note_count()") == 100
    sql_execute(role, "INSERT INTO messages (id, agent_id) VALUES ('m-new', 'agent-1')")
    assert sql_scalar(role, "SELECT sequence_id FROM messages WHERE id = 'm-new'") == 31

    # Even a superuser never recreates a database Letta shares: it would drop the rest.
    assert restore_plan(admin)["reset_mode"] == "in-place"
    with pytest.raises(PrivilegeRefused, match="not Letta's .*table public.app_notes.*in-place"):
        restore_plan(admin, "recreate")
    assert untouched_digests(admin) == untouched


def test_a_set_of_the_whole_database_restores_lettas_part(pg_cluster, tmp_path: Path):
    """Sets written before held the whole database. Restoring one writes Letta's schema only:
    other schemas' entries are left out, and a table of the operator's that the set holds (it
    is in the set's counts) is put back as it was then."""
    role, admin = _shared(pg_cluster, "oldset")
    untouched = untouched_digests(admin)
    whole = tmp_path / "whole.dump"
    subprocess.run(
        [str(admin.bin_dir() / "pg_dump"), "-Fc", "-f", str(whole), "-d", admin.letta_pg_uri()],
        check=True,
    )
    assert any(" TABLE DATA auth users " in line for line in list_dump(admin.bin_dir(), whole))
    sql_execute(role, "DELETE FROM app_notes WHERE id > 50")
    sql_execute(admin, "INSERT INTO auth.users VALUES (gen_random_uuid(), 'new@x', now())")
    auth_now = untouched_digests(admin)["auth.users"]

    empty_database(role, "in-place", also_tables=[*LETTA_COUNTS, "app_notes"])
    restore_dump(role, whole)
    assert _letta_counts(role) == LETTA_COUNTS
    after = untouched_digests(admin)
    assert after["public.app_notes"] == untouched["public.app_notes"]  # as the set held it
    assert after["auth.users"] == auth_now  # not restored: not Letta's schema
    assert after["storage.objects"] == untouched["storage.objects"]


def test_reset_refuses_what_a_cascade_would_take(pg_cluster):
    """A view over Letta's tables, or a foreign key to them, is the operator's: dropping
    Letta's tables with CASCADE would take it, so nothing is dropped and the sentence says."""
    role, admin = _shared(pg_cluster, "cascade")
    untouched = untouched_digests(admin)
    sql_execute(role, "CREATE VIEW note_agents AS SELECT a.name FROM agents a")
    with pytest.raises(ResetRefused, match="would also drop view public.note_agents.*nothing"):
        empty_database(role, "in-place")
    assert _letta_counts(role) == LETTA_COUNTS
    sql_execute(role, "DROP VIEW note_agents")

    sql_execute(role, "ALTER TABLE app_notes ADD COLUMN agent_id text REFERENCES agents(id)")
    with pytest.raises(ResetRefused, match="app_notes constraint app_notes_agent_id_fkey"):
        empty_database(role, "in-place")
    assert _letta_counts(role) == LETTA_COUNTS
    assert sql_scalar(role, "SELECT count(*) FROM app_notes") == 100
    assert untouched_digests(admin)["auth.users"] == untouched["auth.users"]


def test_preflight_refuses_what_a_cascade_would_take(pg_cluster):
    """The same objects, read from the catalog by every destructive run's pre-flight, while
    the server still runs: a reset refused after the stop left the server down, since the
    undo resets the same way (found by tests/test_injected_faults_e2e.py)."""
    role, _ = _shared(pg_cluster, "preflight")
    assert restore_plan(role)["reset_mode"] == "in-place"  # nothing depends on Letta's yet
    sql_execute(role, "CREATE VIEW note_agents AS SELECT a.name FROM agents a")
    with pytest.raises(Refused, match="would also drop view public.note_agents.*nothing was"):
        restore_plan(role)
    sql_execute(role, "DROP VIEW note_agents")
    sql_execute(role, "ALTER TABLE app_notes ADD COLUMN agent_id text REFERENCES agents(id)")
    with pytest.raises(Refused, match="app_notes constraint app_notes_agent_id_fkey"):
        restore_plan(role)
    sql_execute(role, "ALTER TABLE app_notes DROP COLUMN agent_id")
    assert restore_plan(role)["reset_mode"] == "in-place"
    assert _letta_counts(role) == LETTA_COUNTS  # a pre-flight changes nothing


def test_a_new_database_gets_pgvector_where_the_dump_names_it(pg_cluster, tmp_path: Path):
    """A drill's scratch database, or a recreate's: the dump names pgvector's type by its
    schema (``extensions.vector``), so pgvector must be created there, not in public."""
    role, _ = _shared(pg_cluster, "vecschema")
    store = open_store(f"file://{tmp_path}")
    dumped = dump_to_store(role, store, "s/database.dump")
    dump_path = tmp_path / "s" / "database.dump"

    in_public = LettaDatabase(uri=pg_cluster.uri("letta_vec_public"))
    create_database(in_public)
    try:
        with pytest.raises(PgToolError, match="extensions"):
            restore_dump(in_public, dump_path)
    finally:
        drop_database(in_public)

    scratch = LettaDatabase(uri=pg_cluster.uri("letta_vec_extensions"))
    create_database(scratch, pgvector_schema=dumped.pgvector_schema)
    try:
        restore_dump(scratch, dump_path)
        assert sql_table_counts(scratch) == LETTA_COUNTS
        with connect(scratch) as conn:
            schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars().all()
        assert "auth" not in schemas and "storage" not in schemas
    finally:
        drop_database(scratch)


def test_lettas_schema_named_after_the_database(pg_cluster, make_database, tmp_path: Path):
    """The Docker image's shape: Letta's tables and pgvector in a schema named after the
    database (LETTA_PG_SCHEMA), ``public`` dropped; an operator table in a schema of its own.
    The dump is that schema; a new database gets the schema and pgvector in it; a reset in
    place keeps the other schema."""
    admin = make_database("imgshape", with_pgvector=False)
    schema = admin.database_name
    sql_execute(admin, f'CREATE SCHEMA "{schema}"')
    sql_execute(admin, f'CREATE EXTENSION vector WITH SCHEMA "{schema}"')
    sql_execute(admin, "DROP SCHEMA public CASCADE")
    sql_execute(admin, "CREATE SCHEMA reports")
    sql_execute(admin, "CREATE TABLE reports.weekly AS SELECT g FROM generate_series(1, 7) g")
    sql_execute(admin, f'ALTER DATABASE "{schema}" SET search_path TO "{schema}"')
    db = admin.model_copy(update={"db_schema": schema})
    for statement in LETTA_SCHEMA:
        sql_execute(db, statement)
    store = open_store(f"file://{tmp_path}")
    dumped = dump_to_store(db, store, "s/database.dump")
    dump_path = tmp_path / "s" / "database.dump"
    assert dumped.row_counts == LETTA_COUNTS
    assert dumped.pgvector_schema == schema
    assert dumped.left_out == ["schema reports (1 objects)"]
    assert not [line for line in list_dump(db.bin_dir(), dump_path) if "reports" in line]

    copy = LettaDatabase(uri=pg_cluster.uri(f"{schema}_copy"), db_schema=schema)
    create_database(copy, pgvector_schema=dumped.pgvector_schema)
    try:
        restore_dump(copy, dump_path)
        assert sql_table_counts(copy, schema) == LETTA_COUNTS
    finally:
        drop_database(copy)

    assert restore_plan(db)["reset_mode"] == "in-place"  # reports is not Letta's
    empty_database(db, "in-place", also_tables=dumped.row_counts)
    assert sql_table_counts(db, schema) == {}
    assert sql_table_counts(db, "reports") == {"weekly": 7}
    restore_dump(db, dump_path)
    assert sql_table_counts(db, schema) == LETTA_COUNTS
