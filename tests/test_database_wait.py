"""An undo waits for a restarting PostgreSQL, and only for that (real cluster of its own)."""

from __future__ import annotations

import threading
import time

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.database_wait import wait_for_database
from letta_ops.tasks.postgres_connect_errors import DatabaseConnectionFailed
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
