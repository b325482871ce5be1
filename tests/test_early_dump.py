"""The dump a ``letta-ops backup`` starts before Prefect is imported (issue #32), on real
PostgreSQL 18 (superuser) and 16 (an owner-only role), with the real pg_dump and pg_restore.

What must hold: a run takes it over only when it is the run's own dump (database settings,
compression, priority, and a snapshot at the revision the run read); what it stores is the
database as it was at the dump's start (restored, and compared table by table by the tests'
own SQL, content not counts); a dump no run takes is stopped (no pg_dump left, no
transaction left open on the server); nothing is ever written to the store before the run
takes it over. The CLI's own take-over, with a real Letta server: ``tests/test_backup_e2e.py``
(``test_cli_backup_list_verify_prune``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres import early_dump
from letta_ops.tasks.postgres.client_tools import PgToolError
from letta_ops.tasks.postgres.dump import SpooledOutput, StderrDrain, dump_to_store
from letta_ops.tasks.postgres.letta_schema import create_database
from letta_ops.tasks.postgres.restore import restore_dump
from letta_ops.tasks.store.locations import open_store
from tests.fixtures.oracle import sql_execute, sql_scalar, sql_table_digests
from tests.fixtures.postgres import owner_database
from tests.fixtures.tls_postgres import new_database_name, tls_shared_owner_database

pytestmark = pytest.mark.e2e

LETTA_SHAPED = (
    "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('27de0f58e076')",
    "CREATE TABLE agents (id text PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE messages (id text PRIMARY KEY, agent_id text REFERENCES agents(id), "
    "body text, embedding vector(3))",
    "INSERT INTO agents SELECT 'agent-' || i, 'Agent ' || i FROM generate_series(1, 5) i",
    "INSERT INTO messages SELECT 'm-' || i, 'agent-' || (i % 5 + 1), md5(i::text), "
    "'[1,2,3]' FROM generate_series(1, 2000) i",
)


def _letta_shaped(db: LettaDatabase) -> LettaDatabase:
    for statement in LETTA_SHAPED:
        sql_execute(db, statement)
    return db


def _env(db: LettaDatabase, **more: str) -> dict[str, str]:
    return {"LETTA_PG_URI": db.uri.get_secret_value(), **more}


def _dump_backends(db: LettaDatabase) -> int:
    """pg_dump's and the snapshot's sessions on the server (the tests' own SQL)."""
    return sql_scalar(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND (application_name = 'pg_dump' OR state LIKE 'idle in%')",
    )


def _gone(db: LettaDatabase) -> bool:
    """No pg_dump child and, within a few seconds, no dump session left on the server."""
    deadline = time.monotonic() + 10
    while _dump_backends(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _pg_dumps() == set() and _dump_backends(db) == 0


def _pg_dumps() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "pg_dump"}


@pytest.fixture(autouse=True)
def _nothing_left_pending():
    yield
    early_dump.drop_early_dump()


def _restored_digests(restored_into: Callable, dump: Path) -> dict[str, str]:
    target = restored_into("early_restored")
    restore_dump(target, dump)
    return sql_table_digests(target)


@pytest.fixture(params=["pg18-superuser", "pg16-owner", "pg18-owner-tls-shared"])
def cell(request, make_database) -> tuple[LettaDatabase, dict[str, str], Callable]:
    """The database as operators give it, the environment the command reads it from, and a
    factory of empty databases beside it to restore into: PostgreSQL 18 as a superuser;
    PostgreSQL 16 to an owner-only role; PostgreSQL 18 refusing plaintext (verify-full
    against its CA, its own client build) to an owner-only role in a database it shares with
    Supabase's ``auth`` and the operator's table in ``public``."""
    if request.param == "pg18-superuser":
        return _letta_shaped(make_database("early")), {}, make_database
    if request.param == "pg16-owner":
        cluster = request.getfixturevalue("pg16_cluster")
        role = _letta_shaped(owner_database(cluster, "early16"))
        return role, {}, lambda p: _created(LettaDatabase(uri=cluster.uri(new_database_name(p))))
    tls = request.getfixturevalue("pg_tls_cluster")
    role, _admin = tls_shared_owner_database(tls, "earlytls")
    env = {"LETTA_OPS_PG_BIN": str(tls.bin_dir)}
    return _letta_shaped(role), env, lambda p: _created(tls.database(new_database_name(p)))


def _created(db: LettaDatabase) -> LettaDatabase:
    create_database(db)
    return db


def test_a_run_takes_over_its_own_dump_and_stores_the_database_as_it_was_at_its_start(
    cell, tmp_path: Path
):
    db, env, restored_into = cell
    before = {t: d for t, d in sql_table_digests(db).items() if t != "app_notes"}
    assert early_dump.start_early_dump(None, None, _env(db, **env))
    time.sleep(1.0)  # the dump's snapshot is taken by now; what comes next must not be in it
    sql_execute(db, "UPDATE messages SET body = 'after the snapshot' WHERE id = 'm-7'")
    sql_execute(db, "INSERT INTO agents VALUES ('agent-late', 'Late')")
    store = open_store(f"file://{tmp_path / 'store'}")
    assert list((tmp_path / "store").rglob("*")) == []  # nothing written before the take-over

    started = early_dump.take_early_dump(db, "gzip:1", "low", "27de0f58e076")
    assert started is not None
    dumped = dump_to_store(db, store, "s/database.dump", compression="gzip:1", started=started)
    assert dumped.row_counts["agents"] == 5 and dumped.row_counts["messages"] == 2000
    stored = tmp_path / "store" / "s" / "database.dump"
    assert dumped.stored.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert _restored_digests(restored_into, stored) == before
    assert {t: d for t, d in sql_table_digests(db).items() if t != "app_notes"} != before
    if "app_notes" in sql_table_digests(db):  # the shared cell: the operator's table stays out
        assert "table public.app_notes" in dumped.left_out
    assert _gone(db)
    assert early_dump.take_early_dump(db, "gzip:1", "low", "27de0f58e076") is None  # once


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("compression", "compression gzip:1 instead of gzip:6"),
        ("priority", "priority low instead of normal"),
        ("database", "the database setting extra_tables differs"),
        ("revision", "alembic revision"),
    ],
)
def test_a_dump_that_is_not_the_runs_own_is_stopped_and_the_run_dumps_anew(
    change, why, make_database, caplog, tmp_path: Path
):
    db = _letta_shaped(make_database("early_other"))
    assert early_dump.start_early_dump(None, None, _env(db))
    early_dump._pending.done.wait(30)
    compression, priority, revision, run_db = "gzip:1", "low", "27de0f58e076", db
    if change == "compression":
        compression = "gzip:6"
    elif change == "priority":
        priority = "normal"
    elif change == "database":
        run_db = db.model_copy(update={"extra_tables": ["app_notes"]})
    else:  # an upgrade migrated the server between the dump's snapshot and the pre-flight
        sql_execute(db, "UPDATE alembic_version SET version_num = '1c28e167b74f'")
        revision = "1c28e167b74f"
    assert _pg_dumps() or change == "revision"  # running (or finished: a small database)

    with caplog.at_level("INFO"):
        assert early_dump.take_early_dump(run_db, compression, priority, revision) is None
    assert why in caplog.text
    assert db.uri.get_secret_value() not in caplog.text
    assert _gone(db)
    dumped = dump_to_store(
        run_db,
        open_store(f"file://{tmp_path}"),
        "s/database.dump",
        compression=compression,
        priority=priority,
    )
    assert dumped.compression == compression and dumped.row_counts["messages"] == 2000


def test_a_dump_no_run_takes_is_stopped_with_its_transaction(make_database):
    db = _letta_shaped(make_database("early_dropped"))
    sql_execute(db, "INSERT INTO messages SELECT 'n-' || i, 'agent-1', repeat(md5(i::text), 40), "
                "'[1,2,3]' FROM generate_series(1, 60000) i")  # fmt: skip
    assert early_dump.start_early_dump("none", "normal", _env(db))
    early_dump._pending.done.wait(30)
    assert _dump_backends(db) >= 1  # the snapshot's transaction is open on the server
    early_dump.drop_early_dump()
    assert _gone(db)
    early_dump.drop_early_dump()  # twice: nothing left to stop


def test_a_command_never_waits_for_a_dump_stuck_behind_a_lock(make_database):
    """The database holds a lock the dump must wait for (an operator's ALTER TABLE, say):
    a command that fails meanwhile ends at once, and the dump, once it gets the lock, stops
    itself; no pg_dump and no session are left."""
    import pg8000.native

    db = _letta_shaped(make_database("early_locked"))
    p = db.parts
    holder = pg8000.native.Connection(
        p["user"], host=p["host"], port=p["port"], database=p["database"],
        password=p.get("password"), application_name="lock-holder",
    )  # fmt: skip
    try:
        holder.run("BEGIN")
        holder.run("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        assert early_dump.start_early_dump(None, None, _env(db))
        time.sleep(1.0)
        pending = early_dump._pending
        assert pending is not None and not pending.done.is_set()  # waiting for the lock
        began = time.monotonic()
        early_dump.drop_early_dump()
        assert time.monotonic() - began < 1.0
    finally:
        holder.run("ROLLBACK")
        holder.close()
    assert pending.done.wait(30)
    assert _gone(db)


def test_nothing_starts_without_a_database_in_the_environment_and_a_bad_one_is_the_runs_error(
    make_database,
):
    assert not early_dump.start_early_dump(None, None, {})
    assert not early_dump.start_early_dump(
        None, None, {"LETTA_PG_URI": "postgresql://u:p@127.0.0.1/x", "LETTA_OPS_SQLITE_DB": "/x"}
    )
    db = make_database("early_bad")
    bad = {"LETTA_PG_URI": "postgresql://user:password@host:5432/dbname"}  # a placeholder
    assert early_dump.start_early_dump(None, None, bad)
    assert early_dump.take_early_dump(db, "gzip:1", "low", None) is None


def _writer(size: int, code: int = 0) -> subprocess.Popen:
    script = (
        "import sys; data = bytes(range(256)) * 4096\n"
        f"left = {size}\n"
        "while left > 0:\n"
        "    n = min(left, len(data)); sys.stdout.buffer.write(data[:n]); left -= n\n"
        "sys.stdout.flush()\n"
        f"sys.stderr.write('pg_dump: error: query failed: boom\\n'); sys.exit({code})\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def test_the_spool_holds_at_most_its_limit_and_gives_every_byte_in_order():
    size, limit = 24 << 20, 2 << 20
    proc = _writer(size)
    output = SpooledOutput(proc, "pg_dump", StderrDrain(proc), limit=limit)
    time.sleep(1.0)  # nobody reads: the writer must be held back, not buffered whole
    assert output._spooled <= limit + (1 << 20)
    assert proc.poll() is None
    output.set_limit(limit // 4)  # the run took it: what is spooled drains, then stays small
    chunks, held = [], []
    while chunk := output.read(1 << 16):
        chunks.append(chunk)
        held.append(output._spooled)
    drained = next(i for i, n in enumerate(held) if n <= limit // 4)
    assert max(held[drained:]) <= limit // 4 + (1 << 20)
    data = b"".join(chunks)
    expected = (bytes(range(256)) * 4096 * (size // (1 << 20) + 1))[:size]
    assert len(data) == size and hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
    output.close()


def test_the_spool_raises_at_the_end_when_the_child_failed():
    proc = _writer(3 << 20, code=1)
    output = SpooledOutput(proc, "pg_dump", StderrDrain(proc))
    with pytest.raises(PgToolError, match="query failed: boom"):
        while output.read(1 << 16):
            pass
    output.close()
