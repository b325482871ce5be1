"""Emptying and restoring a database on PostgreSQL 16 and 18, as a superuser and as an
owner-only role (NOSUPERUSER NOCREATEDB, pgvector created once by an admin).

Real clusters, real pg_dump/pg_restore (the bundled 18 client against both majors); the
results are counted by the tests' own SQL (``tests.fixtures.oracle``).
"""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres.client_tools import PgToolError
from letta_ops.tasks.postgres.dump import dump_to_store
from letta_ops.tasks.postgres.dump_lanes import assign_lanes
from letta_ops.tasks.postgres.letta_schema import connect, empty_database
from letta_ops.tasks.postgres.post_data_schedule import data_started, post_data_by_table
from letta_ops.tasks.postgres.privileges import (
    PrivilegeRefused,
    choose_reset_mode,
    probe_privileges,
    restore_plan,
)
from letta_ops.tasks.postgres.restore import (
    expected_restore_error,
    restore_dump,
    restore_dump_streaming,
    restore_errors,
)
from letta_ops.tasks.sets.verification import read_dump_toc
from letta_ops.tasks.store.locations import open_store
from tests.fixtures.oracle import (
    digest_differences,
    sql_scalar,
    sql_table_counts,
    sql_table_digests,
)
from tests.fixtures.postgres import owner_database

#: A Letta-shaped schema: a vector column, a free-standing sequence behind a default (as
#: ``messages.sequence_id``), an enum and a foreign key; and a function of the operator's
#: (Letta creates none), whose definition a dump of the schema carries along.
SCHEMA = """
CREATE SEQUENCE message_seq_id;
CREATE TYPE job_status AS ENUM ('created', 'running', 'done');
CREATE TABLE agents (id text PRIMARY KEY, name text NOT NULL, status job_status);
CREATE TABLE messages (
    id text PRIMARY KEY,
    agent_id text REFERENCES agents(id) ON DELETE CASCADE,
    sequence_id bigint NOT NULL DEFAULT nextval('message_seq_id'),
    embedding vector(3)
);
CREATE FUNCTION message_count(a text) RETURNS bigint LANGUAGE sql
    AS 'SELECT count(*) FROM messages WHERE agent_id = a';
INSERT INTO agents SELECT 'agent-' || i, 'Agent ' || i, 'done' FROM generate_series(1, 5) i;
INSERT INTO messages (id, agent_id, embedding)
    SELECT 'm-' || i, 'agent-' || (i % 5 + 1), ('[' || i || ',2,3]')::vector
    FROM generate_series(1, 40) i;
"""

CELLS = [(18, "superuser"), (18, "owner"), (16, "superuser"), (16, "owner")]


def _database(pg_clusters, make_database, major: int, role: str, prefix: str):
    cluster = pg_clusters(major)
    if role == "owner":
        return owner_database(cluster, prefix)
    return make_database(prefix, cluster=cluster)


def _run(db, sql: str) -> None:
    with connect(db, autocommit=True) as conn:
        for statement in filter(str.strip, sql.split(";\n")):
            conn.execute(sa.text(statement))


@pytest.mark.parametrize("major,role", CELLS, ids=[f"pg{m}-{r}" for m, r in CELLS])
def test_dump_empty_and_restore(pg_clusters, make_database, tmp_path: Path, major, role):
    source = _database(pg_clusters, make_database, major, role, "src")
    _run(source, SCHEMA)
    target = _database(pg_clusters, make_database, major, role, "dst")
    _run(target, "CREATE TABLE agents (id int); INSERT INTO agents VALUES (1)")  # stale
    before = sql_table_counts(source)
    assert before == {"agents": 5, "messages": 40}
    content = sql_table_digests(source)  # every row, embeddings included

    store = open_store(f"file://{tmp_path}")
    dumped = dump_to_store(source, store, "s/database.dump")
    assert dumped.row_counts == before
    dump_path = tmp_path / "s" / "database.dump"

    plan = restore_plan(target)
    assert plan["server_major"] == major
    assert plan["reset_mode"] == ("recreate" if role == "superuser" else "in-place")
    assert plan["scratch_databases"] is (role == "superuser")
    empty_database(target, plan["reset_mode"])
    assert sql_table_counts(target) == {}
    assert sql_scalar(target, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1

    tolerated = restore_dump(target, dump_path, jobs=2)
    assert sql_table_counts(target) == before
    assert digest_differences(content, sql_table_digests(target)) == {}
    # Exactly the settings a PostgreSQL 16 server does not know, nothing else.
    assert all("transaction_timeout" in line for line in tolerated)
    assert bool(tolerated) is (major < 17)
    # The free-standing sequence and its default came back: a new row gets the next number.
    _run(target, "INSERT INTO messages (id, agent_id) VALUES ('m-new', 'agent-1')")
    assert sql_scalar(target, "SELECT sequence_id FROM messages WHERE id = 'm-new'") == 41
    assert sql_scalar(target, "SELECT message_count('agent-1')") == 9

    # Reset in place again: Letta's tables, their sequence and enum go; the extension, the
    # database and the function (not Letta's: Letta creates none) stay.
    empty_database(target, "in-place")
    assert sql_table_counts(target) == {}
    assert sql_scalar(target, "SELECT count(*) FROM pg_type WHERE typname = 'job_status'") == 0
    assert sql_scalar(target, "SELECT to_regclass('message_seq_id')") is None
    assert sql_scalar(target, "SELECT count(*) FROM pg_proc WHERE proname = 'message_count'") == 1
    assert sql_scalar(target, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1


@pytest.mark.parametrize("major,role", CELLS, ids=[f"pg{m}-{r}" for m, r in CELLS])
def test_restore_while_the_dump_streams(
    pg_clusters, make_database, tmp_path: Path, major, role, caplog
):
    """Tables and rows from the stream itself; the tables first and then indexes and
    constraints in parallel from the dump's head alone (its table of contents); the digest is
    of exactly what was read. A cut stream fails, in one line, and so does a stream whose
    first bytes are not the head's."""
    # bulk is the operator's: named as extra_tables, it is backed up with Letta's.
    source = _database(pg_clusters, make_database, major, role, "ssrc")
    source = source.model_copy(update={"extra_tables": ["bulk"]})
    _run(source, SCHEMA)
    # Rows enough that the dump is longer than the head read for its table of contents.
    _run(source, "CREATE TABLE bulk AS SELECT g, md5(g::text) h FROM generate_series(1, 60000) g")
    _run(source, "CREATE INDEX bulk_h ON bulk (h)")
    before = sql_table_counts(source)
    content = sql_table_digests(source)  # every row, embeddings included
    store = open_store(f"file://{tmp_path}")
    dumped = dump_to_store(source, store, "s/database.dump")
    head = tmp_path / "head.dump"
    toc, head_bytes = read_dump_toc(
        store, "s/database.dump", dumped.stored.size, source.bin_dir(), keep=head
    )
    assert head.stat().st_size == head_bytes < dumped.stored.size  # the head is not the dump
    head.chmod(0o644)

    target = _database(pg_clusters, make_database, major, role, "sdst")
    empty_database(target, restore_plan(target)["reset_mode"])
    # Weights as if messages were as big as bulk: bulk in one lane, the rest in the other.
    weights = {**before, "messages": before["bulk"]}
    assert len(assign_lanes(toc, 2, weights)) == 2
    with store.open_read("s/database.dump") as stream:
        restored = restore_dump_streaming(target, stream, head, toc, jobs=2, weights=weights)
    assert (restored.sha256, restored.size) == (dumped.stored.sha256, dumped.stored.size)
    assert restored.lanes == 2
    assert sql_table_counts(target) == before
    assert digest_differences(content, sql_table_digests(target)) == {}
    assert all("transaction_timeout" in line for line in restored.warnings)
    # post-data ran: the default is back, the primary key and the foreign key exist.
    _run(target, "INSERT INTO messages (id, agent_id) VALUES ('m-new', 'agent-1')")
    assert sql_scalar(target, "SELECT sequence_id FROM messages WHERE id = 'm-new'") == 41
    with pytest.raises(sa.exc.DBAPIError, match="duplicate key"):
        _run(target, "INSERT INTO messages (id, agent_id) VALUES ('m-1', 'agent-1')")
    with pytest.raises(sa.exc.DBAPIError, match="foreign key"):
        _run(target, "INSERT INTO messages (id, agent_id) VALUES ('m-x', 'no-such-agent')")
    assert sql_scalar(target, "SELECT count(*) FROM pg_indexes WHERE indexname = 'bulk_h'") == 1

    # No room on disk for the lanes' spool: one lane, read straight from the stream.
    cramped = _database(pg_clusters, make_database, major, role, "scramped")
    empty_database(cramped, restore_plan(cramped)["reset_mode"])
    with store.open_read("s/database.dump") as stream, caplog.at_level(logging.WARNING):
        restored = restore_dump_streaming(
            cramped, stream, head, toc, jobs=2, weights=weights, spool_bytes=1 << 62
        )
    assert restored.lanes == 1 and restored.sha256 == dumped.stored.sha256
    assert sql_table_counts(cramped) == before
    assert digest_differences(content, sql_table_digests(cramped)) == {}
    assert "No room for a" in caplog.text and "one lane" in caplog.text

    cut = _database(pg_clusters, make_database, major, role, "scut")
    empty_database(cut, restore_plan(cut)["reset_mode"])
    data = (tmp_path / "s" / "database.dump").read_bytes()
    with pytest.raises(PgToolError, match="pg_restore failed"):
        restore_dump_streaming(
            cut, io.BytesIO(data[: len(data) // 2]), head, toc, jobs=2, weights=weights
        )

    other = _database(pg_clusters, make_database, major, role, "sother")
    empty_database(other, restore_plan(other)["reset_mode"])
    altered = bytearray(data)
    altered[head_bytes // 2] ^= 0xFF  # a byte inside the head's span
    with pytest.raises(PgToolError, match="first bytes differ between two reads"):
        restore_dump_streaming(other, io.BytesIO(bytes(altered)), head, toc)


@pytest.mark.parametrize("major", [16, 18])
def test_owner_role_refusals_name_the_fix(pg_clusters, major):
    cluster = pg_clusters(major)
    owned = owner_database(cluster, "refuse")
    facts = probe_privileges(owned)
    assert (facts.superuser, facts.createdb, facts.owns_database) == (False, False, True)

    with pytest.raises(PrivilegeRefused, match="NOCREATEDB.*ALTER ROLE .* CREATEDB"):
        choose_reset_mode(facts, "recreate")
    assert choose_reset_mode(facts, "auto") == "in-place"

    # Without pgvector (no admin created it) neither way works; the sentence says whom to ask.
    bare = owner_database(cluster, "bare", with_pgvector=False)
    with pytest.raises(PrivilegeRefused, match="ask your provider's admin.*CREATE EXTENSION"):
        restore_plan(bare)

    # In public (owned by pg_database_owner since PostgreSQL 15) the database's owner may
    # drop another role's table: the reset in place takes Letta's, whoever owns them.
    admin = LettaDatabase(uri=cluster.uri(owned.database_name))
    _run(owned, "CREATE TABLE agents (id int)")
    _run(admin, "CREATE TABLE messages (id int)")
    assert restore_plan(owned)["reset_mode"] == "in-place"
    empty_database(owned, "in-place")
    assert sql_table_counts(owned) == {}

    # In a schema the role does not own (as the Docker image's init script makes), another
    # role's object cannot be dropped: refused before anything is, naming owner and fix.
    _run(admin, f"CREATE SCHEMA shared; GRANT USAGE, CREATE ON SCHEMA shared TO {facts.role}")
    in_shared = owned.model_copy(update={"db_schema": "shared"})
    _run(in_shared, "CREATE TABLE shared.agents (id int)")
    _run(admin, "CREATE TABLE shared.messages (id int)")
    with pytest.raises(PrivilegeRefused, match="belong to letta_ops.*table shared.messages"):
        restore_plan(in_shared)
    with pytest.raises(sa.exc.DatabaseError, match="must be owner"):
        _run(in_shared, "DROP TABLE shared.messages")
    assert sql_scalar(admin, "SELECT count(*) FROM pg_tables WHERE schemaname = 'shared'") == 2


def test_older_client_than_server_is_refused(pg_cluster, tmp_path: Path):
    from letta_ops.tasks.postgres.privileges import require_supported_server

    with pytest.raises(PrivilegeRefused, match="major 16, older than the server's 18"):
        require_supported_server(server_major=18, client_major=16)
    require_supported_server(server_major=16, client_major=18)
    with pytest.raises(PrivilegeRefused, match="PostgreSQL 12 is not a supported"):
        require_supported_server(server_major=12, client_major=18)

    # For real: PostgreSQL 16's client tools (pgserver) against the 18 cluster.
    from tests.fixtures.postgres import pg16_bin_dir

    db = LettaDatabase(uri=pg_cluster.uri("postgres"), pg_bin_dir=pg16_bin_dir())
    with pytest.raises(PrivilegeRefused, match="pg_bin_dir"):
        dump_to_store(db, open_store(f"file://{tmp_path}"), "s/database.dump")
    assert not (tmp_path / "s" / "database.dump").exists()


STDERR_FROM_16 = """pg_restore: error: could not execute query: ERROR:  unrecognized configuration \
parameter "transaction_timeout"
Command was: SET transaction_timeout = 0;
pg_restore: error: could not execute query: ERROR:  relation "agents" already exists
Command was: CREATE TABLE public.agents (
    id text
);


pg_restore: warning: errors ignored on restore: 2
"""


def test_only_transaction_timeout_on_an_older_server_is_expected():
    errors = restore_errors(STDERR_FROM_16)
    assert len(errors) == 2
    assert "Command was: SET transaction_timeout = 0;" in errors[0]
    assert "CREATE TABLE public.agents" in errors[1]
    assert expected_restore_error(errors[0], server_major=16)
    assert not expected_restore_error(errors[0], server_major=17)  # a 17 server knows it
    assert not expected_restore_error(errors[1], server_major=16)


def test_entries_the_target_already_has_are_left_out_of_the_restore():
    from letta_ops.tasks.postgres.restore import _exists_in_target

    have_ext, have_schemas = {"vector"}, {"public", "letta"}
    assert _exists_in_target("2; 3079 16387 EXTENSION - vector ", have_ext, have_schemas)
    assert _exists_in_target("2633; 0 0 COMMENT - EXTENSION vector ", have_ext, have_schemas)
    assert _exists_in_target("5; 2615 2200 SCHEMA - letta letta_owner", have_ext, have_schemas)
    assert _exists_in_target("6; 0 0 COMMENT - SCHEMA letta letta_owner", have_ext, have_schemas)
    # What the target lacks is restored, and so is every table, type or sequence.
    assert not _exists_in_target("3; 3079 1 EXTENSION - pg_trgm ", have_ext, have_schemas)
    assert not _exists_in_target("7; 2615 1 SCHEMA - other o", have_ext, have_schemas)
    assert not _exists_in_target("217; 1259 16586 TABLE public vector o", have_ext, have_schemas)
    assert not _exists_in_target("885; 1247 16595 TYPE public letta o", have_ext, have_schemas)


def test_a_driver_error_becomes_postgres_own_sentence(pg_cluster):
    from letta_ops.tasks.errors import database_error_message

    db = LettaDatabase(uri=pg_cluster.uri("postgres"))
    with pytest.raises(sa.exc.DatabaseError) as failure:
        _run(db, "CREATE EXTENSION no_such_extension")
    message = database_error_message(failure.value)
    assert message.startswith('PostgreSQL: extension "no_such_extension" is not available')
    assert "{" not in message and "'M'" not in message
    assert database_error_message(RuntimeError("line one\nline two")) == "line one"


def test_cleanup_sql_needs_delete_on_sources(pg_cluster):
    from letta_ops.tasks.postgres.privileges import require_table_privileges

    owned = owner_database(pg_cluster, "cleanup")
    admin = LettaDatabase(uri=pg_cluster.uri(owned.database_name))
    _run(admin, f"CREATE TABLE sources (id text); GRANT SELECT ON sources TO {owned.parts['user']}")
    with pytest.raises(PrivilegeRefused, match="lacks UPDATE, DELETE on public.sources.*GRANT"):
        require_table_privileges(owned, "sources", ("SELECT", "UPDATE", "DELETE"))
    _run(admin, f"GRANT UPDATE, DELETE ON sources TO {owned.parts['user']}")
    require_table_privileges(owned, "sources", ("SELECT", "UPDATE", "DELETE"))


def test_compression_choices_are_recorded(pg_cluster, tmp_path: Path):
    """Spellings and precedence: ``tests/test_dump_compression.py``."""
    from letta_ops.tasks.errors import Refused

    db = LettaDatabase(uri=pg_cluster.uri("postgres"), extra_tables=["compress_me"])
    _run(
        db,
        "CREATE TABLE IF NOT EXISTS compress_me AS SELECT g, repeat('x', 200) AS t "
        "FROM generate_series(1, 5000) g",
    )
    store = open_store(f"file://{tmp_path}")
    plain = dump_to_store(db, store, "a/database.dump", compression="none")
    packed = dump_to_store(db, store, "b/database.dump", compression="gzip:9")
    assert (plain.compression, packed.compression) == ("none", "gzip:9")
    assert packed.stored.size * 5 < plain.stored.size  # really compressed, really not
    # The bundled client has no zstd: refused before anything is written, with the way out.
    with pytest.raises(Refused, match="cannot compress with zstd.*pg_bin_dir"):
        dump_to_store(db, store, "c/database.dump", compression="zstd")
    assert not (tmp_path / "c").exists()
    _run(db, "DROP TABLE compress_me")


@pytest.mark.parametrize("major", [16, 18])
def test_post_data_schedule_pairs_real_pg_restore_output(
    pg_clusters, make_database, tmp_path: Path, major
):
    """Each table's primary key and indexes may be built once its rows are in; a foreign key
    waits for the end; pg_restore's progress names the table whose rows start loading."""
    source = _database(pg_clusters, make_database, major, "superuser", "sched")
    _run(source, SCHEMA)
    _run(source, "CREATE INDEX messages_agent ON messages (agent_id)")
    dump = tmp_path / "database.dump"
    dump_to_store(source, open_store(f"file://{tmp_path}"), "database.dump")
    pg_restore = str(source.bin_dir() / "pg_restore")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([pg_restore, *args], capture_output=True, text=True, check=True)

    post_data = [
        line
        for line in run("--list", "--section=post-data", str(dump)).stdout.splitlines()
        if line and not line.startswith(";")
    ]
    schedule = post_data_by_table(
        post_data, run("--section=post-data", "-f", "-", str(dump)).stdout
    )

    assert {table: [line.split()[-2] for line in lines] for table, lines in schedule.items()} == {
        "public.agents": ["agents_pkey"],
        "public.messages": ["messages_pkey", "messages_agent"],
    }
    foreign_keys = [line for line in post_data if "FK CONSTRAINT" in line]
    assert foreign_keys and not any(line in sum(schedule.values(), []) for line in foreign_keys)
    # A script whose entries do not pair with the list schedules nothing early.
    assert (
        post_data_by_table(post_data[1:], run("--section=post-data", "-f", "-", str(dump)).stdout)
        == {}
    )

    progress = run("--verbose", "--section=data", "-f", "/dev/null", str(dump)).stderr
    assert [t for line in progress.splitlines() if (t := data_started(line))] == [
        "public.agents",
        "public.messages",
    ]
