"""Letta 0.11.7 on SQLite (``HOME/.letta/sqlite.db``, the pip default) through letta-ops'
process runtime, with agents named as real databases hold them (``Café Ñandú``,
``AI/ML Expert``). Every state is read back with the tests' own ``sqlite3`` queries
(tests/fixtures/sqlite_oracle.py), never with the product's.

Cells: engine SQLite; runtime letta-ops' process runtime; Letta 0.11.7.
"""

from __future__ import annotations

import time

import psutil
import pytest

from letta_ops.tasks.letta.api import offline_agent_body
from tests.fixtures.sqlite_letta import SQLITE_AGENT_NAMES, SQLITE_VERSION
from tests.fixtures.sqlite_oracle import sqlite_agent_messages, sqlite_agents

pytestmark = pytest.mark.e2e


def test_process_runtime_serves_letta_from_its_sqlite_file(sqlite_letta_copy, start_sqlite_letta):
    path = sqlite_letta_copy.path
    stored = sqlite_agents(path)
    assert sorted(stored.values()) == sorted(SQLITE_AGENT_NAMES)
    assert all(count > 0 for count in sqlite_agent_messages(path).values())

    started = time.monotonic()
    running = start_sqlite_letta("sqlite-serve")
    print(f"\nLetta {SQLITE_VERSION} on SQLite healthy in {time.monotonic() - started:.1f} s")
    status = running.runtime.status()
    assert status["running"] and status["health"]["version"] == SQLITE_VERSION
    environment = psutil.Process(status["pid"]).environ()
    assert not [name for name in environment if name.startswith("LETTA_PG")]
    assert environment["HOME"] == str(sqlite_letta_copy.server_home)

    with running.client() as client:
        served = {agent["id"]: agent["name"] for agent in client.list_agents()}
        assert served == stored
        created = client.create_agent(offline_agent_body("written-now"))
    # The server writes the very file the profile names.
    assert sqlite_agents(path)[created["id"]] == "written-now"

    running.runtime.stop()
    assert not psutil.pid_exists(status["pid"])
