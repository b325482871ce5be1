"""The fault matrix as a shell user runs it: no ``PREFECT_API_URL``, so each command runs on a
temporary Prefect server of its own over one local SQLite database (``PREFECT_HOME``).

Why a file of its own: there, a ``kill -9`` of a destructive run takes its temporary Prefect
server down with it, and the slot's lease lives in that server's memory. The slot stays
counted in the local database with no lease behind it and never expires; ``recover`` must
take it on the journal's proof that the run is dead, with no ``unlock --force``.

Nothing here reads Prefect in-process: the state is read from the local SQLite file, the
audit store, the database (the tests' own SQL) and Letta's HTTP API. PostgreSQL 18, superuser,
Letta 0.14.0 -> 0.16.2 (migrate), killed during the target's alembic migration.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from letta_ops.tasks.audit.store import AuditStore
from tests.fixtures.kill_run import kill_when_step_begins, letta_ops, run_letta_ops
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_table_counts,
    sql_table_digests,
)

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"


def local_slot_state(prefect_home: Path) -> tuple[list[int], list[str]]:
    """The destructive slots' counts and the lock holder records, read straight from the
    temporary servers' SQLite database (no Prefect API runs between commands)."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        slots = [
            row[0]
            for row in db.execute(
                "SELECT active_slots FROM concurrency_limit_v2 "
                "WHERE name LIKE 'letta-ops-destructive-%'"
            )
        ]
        holders = [
            row[0]
            for row in db.execute(
                "SELECT name FROM variable WHERE name LIKE 'letta-ops-lock-%' "
                "AND name NOT LIKE 'letta-ops-lock-taken-%'"
            )
        ]
    return slots, holders


def test_kill_9_on_temporary_prefect_servers_then_recover_without_unlock(
    start_letta, s3_env, s3_bucket, monkeypatch, tmp_path
):
    running = start_letta(FROM_VERSION, "localpf")
    with running.client() as client:
        seed_agents(client, 3, prefix="localpf")
    _, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    server, base_url, db = running.runtime.server_name, running.server.base_url, running.database
    home = tmp_path / "prefect-home"
    home.mkdir()
    digests_before, agents_before = sql_table_digests(db), http_agents(base_url)
    counts_before = sql_table_counts(db)

    proc = letta_ops(
        "upgrade", "--to", NEW_VERSION, "--yes", "--strategy", "migrate", local_prefect_home=home
    )
    # One second into the step: alembic is still importing Letta, the schema untouched (three
    # seconds, as in the issue, let a fast migration finish first: then recover rightly
    # finishes forward, another cell, in tests/test_recover_e2e.py).
    killed = kill_when_step_begins(proc, server, f"alembic upgrade to {NEW_VERSION}", 1.0)
    # The state: the slot counted in the local database, its lease gone with the
    # temporary server; the holder record names the dead run.
    slots, holders = local_slot_state(home)
    assert slots == [1] and len(holders) == 1
    # unlock, too, sees the holder dead (it used to refuse: "which may still run").
    planned = run_letta_ops("unlock", "--dry-run", "--json", local_prefect_home=home)
    assert planned.returncode == 0, planned.stderr[-3000:]
    would = json.loads(planned.stdout)
    assert would["would_free"] is True and "is gone" in would["reason"], would
    assert local_slot_state(home) == (slots, holders)  # a plan frees nothing

    done = run_letta_ops("recover", "--json", local_prefect_home=home)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["outcome"] == "recovered" and report["interrupted_run"] == killed
    assert report["plan"]["action"] == "restore"
    assert http_version(base_url) == FROM_VERSION
    assert http_agents(base_url) == agents_before
    assert sql_table_counts(db) == counts_before
    assert digest_differences(digests_before, sql_table_digests(db)) == {}
    assert local_slot_state(home) == ([0], [])  # given back, exactly once
    [record] = AuditStore.from_env().find(killed)
    assert record.outcome == "crashed"

    again = run_letta_ops("recover", "--json", local_prefect_home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["outcome"] == "nothing to recover"
