"""An undo waits for a restarting PostgreSQL, and only for that (real cluster of its own)."""

from __future__ import annotations

import threading
import time

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres.connect_errors import DatabaseConnectionFailed
from letta_ops.tasks.postgres.database_wait import wait_for_database
from tests.fixtures.postgres import _start_cluster


@pytest.fixture
def own_cluster():
    cluster = _start_cluster("letta-ops-wait-")
    try:
        yield cluster
    finally:
        cluster.remove()


def test_waits_for_a_restart_not_for_a_wrong_password(own_cluster):
    db = LettaDatabase(uri=own_cluster.uri("postgres"))
    said: list[str] = []
    wait_for_database(db, log=said.append)
    assert said == []  # up: answered at the first try

    own_cluster.stop()
    restarted = threading.Timer(3.0, own_cluster.start)
    restarted.start()
    try:
        waited = wait_for_database(db, timeout=60, log=said.append)
    finally:
        restarted.join()
    assert waited >= 2.5 and len(said) == 1  # it waited, and said so once
    assert "waiting up to 60 s" in said[0] and own_cluster.password not in said[0]

    wrong = LettaDatabase(uri=own_cluster.uri("postgres").replace(own_cluster.password, "nope"))
    started = time.monotonic()
    with pytest.raises(DatabaseConnectionFailed, match="password authentication failed"):
        wait_for_database(wrong, timeout=60)
    assert time.monotonic() - started < 10  # not waited out

    own_cluster.stop()
    with pytest.raises(DatabaseConnectionFailed, match="connection refused"):
        wait_for_database(db, timeout=2)  # a database that stays down: bounded


def test_waits_through_a_shutdown_in_progress(own_cluster):
    """A smart shutdown waits for open sessions; meanwhile every new one is refused with
    FATAL 57P03 "the database system is shutting down" (the driver's own error, not a
    refused socket): what the undo met after a restart. It waits through it, then through
    the refused port, until the cluster is back."""
    import pg8000.native

    held = pg8000.native.Connection(
        user=own_cluster.superuser,
        password=own_cluster.password,
        host="127.0.0.1",
        port=own_cluster.port,
        database="postgres",
    )
    own_cluster._pg("pg_ctl", "-D", str(own_cluster.data_dir), "-m", "smart", "-W", "stop")

    def session_ends_then_restart() -> None:
        time.sleep(3)
        held.close()
        while (own_cluster.data_dir / "postmaster.pid").exists():
            time.sleep(0.2)
        own_cluster.start()

    back = threading.Thread(target=session_ends_then_restart)
    back.start()
    said: list[str] = []
    try:
        db = LettaDatabase(uri=own_cluster.uri("postgres"))
        waited = wait_for_database(db, timeout=60, log=said.append)
    finally:
        back.join()
    assert "shutting down" in said[0] and waited >= 2.5


def test_what_counts_as_a_lost_connection():
    """One more try of an undo after a session lost under it, never after a failing
    statement (the texts are those the injected-faults cells met)."""
    from pg8000.exceptions import DatabaseError

    from letta_ops.tasks.postgres.client_tools import PgToolError
    from letta_ops.tasks.postgres.database_wait import lost_connection

    cut = PgToolError(
        'pg_restore failed: pg_restore: error: COPY failed for table "messages": server '
        "closed the connection unexpectedly"
    )
    shutting = DatabaseError({"S": "FATAL", "C": "57P03", "M": "the database system is shutting"})
    conflict = DatabaseError({"S": "ERROR", "C": "42P07", "M": 'relation "x" already exists'})
    password = DatabaseError({"S": "FATAL", "C": "28P01", "M": "password authentication failed"})
    assert lost_connection(cut) and lost_connection(shutting)
    assert not lost_connection(conflict) and not lost_connection(password)
    assert not lost_connection(PgToolError("pg_restore failed: could not read input file"))
