"""A recreate-mode restore onto a database that holds nothing (a staging copy, a new host)
goes straight into it, with no database beside it to create, drop and rename; one that holds
anything keeps the restore-beside-and-swap path. Either way a failed restore leaves the target
as it was.

Real PostgreSQL 18 (the session cluster), real pg_dump and pg_restore, a real file store; the
results are read by the tests' own SQL (``tests.fixtures.oracle``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.flows.steps.restore_server import restore_database_from_set
from letta_ops.tasks.postgres.client_tools import PgToolError
from letta_ops.tasks.postgres.dump import dump_to_store
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.postgres.restore_target import pgvector_schema_if_empty
from letta_ops.tasks.sets.manifest import ManifestObject
from letta_ops.tasks.store.locations import open_store
from tests.fixtures.hand_made_manifest import hand_made_manifest
from tests.fixtures.oracle import digest_differences, sql_scalar, sql_table_digests

SCHEMA = """
CREATE SEQUENCE message_seq_id;
CREATE TABLE agents (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE messages (
    id text PRIMARY KEY,
    agent_id text REFERENCES agents(id),
    sequence_id bigint NOT NULL DEFAULT nextval('message_seq_id'),
    embedding vector(3)
);
INSERT INTO agents SELECT 'agent-' || i, 'Agent ' || i FROM generate_series(1, 5) i;
INSERT INTO messages (id, agent_id, embedding)
    SELECT 'm-' || i, 'agent-' || (i % 5 + 1), ('[' || i || ',2,3]')::vector
    FROM generate_series(1, 300) i
"""


def _run(db: LettaDatabase, sql: str) -> None:
    with connect(db, autocommit=True) as conn:
        for statement in filter(str.strip, sql.split(";\n")):
            conn.execute(sa.text(statement))


def _oid(db: LettaDatabase) -> int | None:
    """The database's oid: the same after a restore into it, another after a swap."""
    admin = db.for_database("postgres")
    return sql_scalar(admin, f"SELECT oid FROM pg_database WHERE datname = '{db.database_name}'")


def _databases(db: LettaDatabase) -> set[str]:
    admin = db.for_database("postgres")
    with connect(admin) as conn:
        return set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())


@pytest.fixture(scope="module")
def dumped_set(make_database, tmp_path_factory):
    """A source database, its dump in a file store and the manifest naming it."""
    source = make_database("empty_src")
    _run(source, SCHEMA)
    store = open_store(f"file://{tmp_path_factory.mktemp('store')}")
    dumped = dump_to_store(source, store, "srv/s1/database.dump")
    now = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    manifest = hand_made_manifest(
        "s1",
        "srv",
        "srv/s1/database.dump",
        {
            "srv/s1/database.dump": ManifestObject(
                size=dumped.stored.size, sha256=dumped.stored.sha256
            )
        },
        created_at=now,
        database_name=source.database_name,
        row_counts=dumped.row_counts,
    )
    return source, store, manifest


def _recreate_mode(db: LettaDatabase) -> LettaDatabase:
    return db.model_copy(update={"reset_mode": "recreate"})


def test_an_empty_target_is_restored_into_directly(make_database, dumped_set):
    source, store, manifest = dumped_set
    target = make_database("empty_dst")
    assert pgvector_schema_if_empty(target) == (True, "public")
    oid = _oid(target)

    restored = restore_database_from_set(_recreate_mode(target), store, manifest)

    assert restored["count_differences"] == [] and restored["replaced"]
    assert _oid(target) == oid  # the same database: nothing created, dropped or renamed
    assert not any(name.endswith("_lops_incoming") for name in _databases(target))
    assert digest_differences(sql_table_digests(source), sql_table_digests(target)) == {}
    _run(target, "INSERT INTO messages (id, agent_id) VALUES ('m-new', 'agent-1')")
    assert sql_scalar(target, "SELECT sequence_id FROM messages WHERE id = 'm-new'") == 301


def test_a_failed_restore_leaves_the_empty_target_as_it_was(make_database, dumped_set):
    source, store, manifest = dumped_set
    # Counts the dump does not hold: the restore runs, the proof fails.
    wrong = manifest.model_copy(update={"row_counts": {**manifest.row_counts, "agents": 6}})
    target = make_database("empty_fail")
    restored = restore_database_from_set(_recreate_mode(target), store, wrong)
    assert [d["table"] for d in restored["count_differences"]] == ["agents"]
    assert not restored["replaced"]
    assert pgvector_schema_if_empty(target) == (True, "public")  # empty again, pgvector kept

    # Without pgvector before: none after either.
    bare = make_database("empty_bare", with_pgvector=False)
    restore_database_from_set(_recreate_mode(bare), store, wrong)
    assert pgvector_schema_if_empty(bare) == (True, None)

    # A damaged dump is refused before the target is touched: same database, still empty.
    damaged = manifest.model_copy(
        update={
            "objects": {
                manifest.dump: ManifestObject(
                    size=manifest.objects[manifest.dump].size, sha256="0" * 64
                )
            }
        }
    )
    untouched = make_database("empty_damaged")
    oid = _oid(untouched)
    with pytest.raises(PgToolError, match="does not match its sha256"):
        restore_database_from_set(_recreate_mode(untouched), store, damaged)
    assert _oid(untouched) == oid and pgvector_schema_if_empty(untouched) == (True, "public")


def test_a_target_holding_anything_is_swapped_and_kept_on_failure(
    make_database, dumped_set, tmp_path: Path
):
    source, store, manifest = dumped_set
    target = make_database("held_dst")
    _run(target, "CREATE FUNCTION operators_own() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert pgvector_schema_if_empty(target) == (False, "public")
    oid = _oid(target)

    wrong = manifest.model_copy(update={"row_counts": {**manifest.row_counts, "agents": 6}})
    failed = restore_database_from_set(_recreate_mode(target), store, wrong)
    assert failed["count_differences"] and _oid(target) == oid  # the live database kept
    assert sql_scalar(target, "SELECT operators_own()") == 1

    restored = restore_database_from_set(_recreate_mode(target), store, manifest)
    assert restored["replaced"] and _oid(target) != oid  # restored beside it, swapped in
    assert digest_differences(sql_table_digests(source), sql_table_digests(target)) == {}


def test_pgvector_elsewhere_or_a_table_is_not_empty(make_database):
    db = make_database("empty_probe", with_pgvector=False)
    _run(db, "CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions")
    assert pgvector_schema_if_empty(db) == (False, "extensions")  # the schema is someone's
    other = make_database("empty_probe_table")
    _run(other, "CREATE TABLE t (id int)")
    assert pgvector_schema_if_empty(other) == (False, "public")
    missing = other.for_database("no_such_database_here")
    assert pgvector_schema_if_empty(missing) == (False, None)
