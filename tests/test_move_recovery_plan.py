"""``recover``'s decision after an interrupted move to PostgreSQL (``move-to-postgres``, or the
first half of a SQLite server's one-command ``upgrade``), and how it names the target again.

A move only ever reads the SQLite file, so wherever it stopped the way out is the move's own
undo (``back-on-sqlite``): never a restore of a set it did not take, never finishing forward
onto a database the server's profile does not name.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from letta_ops.flows.steps.move_steps import COPY_STEP, journaled_target, schema_step
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.runs.journal import JournalEntry, noted
from letta_ops.tasks.runs.recovery_plan import plan_recovery

TARGET_URI = "postgresql://letta:s3cret-pw@127.0.0.1:5432/moved"
MOVE = {
    "from_version": "0.11.7",
    "moved_to": "postgresql://letta:***@127.0.0.1:5432/moved",
    "target_database": None,
    "sqlite_file": "/home/op/.letta/sqlite.db",
}
ONE_COMMAND = {
    "backup_set": "prod/20261207T010000Z-abc",
    "from_version": "0.11.7",
    "to_version": "0.16.2",
    "strategy": "migrate",
    "reset_mode": "in-place",
    "target_revision": "27de0f58e076",
    "moved_to": MOVE["moved_to"],
    "target_database": None,
}
MOVE_STEPS = ["stop server", schema_step("0.11.7"), COPY_STEP, "start on PostgreSQL"]


def journal(operation: str, facts: dict, *steps: str, sha256: str | None = None):
    """A journal that began with ``facts`` and started ``steps`` in order (each earlier one
    ended); the schema step records ``sha256`` as the flows do."""
    entries = [
        JournalEntry("run-1", "prod", operation, "begin", "begin", datetime.now(UTC), "h", 1, facts)
    ]
    for i, step in enumerate(steps):
        if i:
            entries.append(
                JournalEntry(
                    "run-1", "prod", operation, steps[i - 1], "end", datetime.now(UTC), "h", 1
                )
            )
        details = {"sqlite_sha256": sha256} if sha256 and step.startswith("move: Letta") else {}
        entries.append(
            JournalEntry(
                "run-1", "prod", operation, step, "start", datetime.now(UTC), "h", 1, details
            )
        )
    return entries


@pytest.mark.parametrize("stopped_at", range(1, len(MOVE_STEPS) + 1))
def test_a_move_killed_at_any_step_goes_back_on_sqlite(stopped_at):
    j = journal("move-to-postgres", MOVE, *MOVE_STEPS[:stopped_at])
    # Killed as it started the server on PostgreSQL, 0.11.7 may answer from there: still undone.
    for running in (None, "0.11.7"):
        plan = plan_recovery(j, revision=None, running_version=running)
        assert plan.action == "back-on-sqlite", plan
        assert plan.version == "0.11.7" and plan.backup_set is None
        assert plan.interrupted_at == MOVE_STEPS[stopped_at - 1]
        assert MOVE["moved_to"] in plan.reason and "restore" not in plan.reason


def test_a_move_killed_before_its_stop_only_starts_a_server_that_is_down():
    j = journal("move-to-postgres", MOVE)
    assert plan_recovery(j, None, None).action == "start"
    assert plan_recovery(j, None, None).version == "0.11.7"
    assert plan_recovery(j, None, "0.11.7").action == "close"


@pytest.mark.parametrize("revision", [None, "27de0f58e076"])
def test_a_one_command_upgrade_killed_in_its_migration_goes_back_on_sqlite(revision):
    """Even a target already at 0.16.2's head is not finished forward: the server's profile
    names the SQLite file; the safety set is only the fallback for a file that changed."""
    steps = ("stop server", schema_step("0.11.7"), COPY_STEP, "alembic upgrade to 0.16.2")
    plan = plan_recovery(journal("upgrade", ONE_COMMAND, *steps), revision, None)
    assert plan.action == "back-on-sqlite" and plan.version == "0.11.7"
    assert plan.backup_set == ONE_COMMAND["backup_set"]
    assert f"restore {ONE_COMMAND['backup_set']} instead" in plan.reason


def test_an_upgrade_on_postgresql_is_decided_as_before():
    facts = {k: v for k, v in ONE_COMMAND.items() if k not in ("moved_to", "target_database")}
    plan = plan_recovery(journal("upgrade", facts, "alembic upgrade to 0.16.2"), None, None)
    assert plan.action == "restore"


def test_the_checksum_the_move_took_is_read_back_from_its_step():
    sha = "ab" * 32
    assert noted(journal("move-to-postgres", MOVE, *MOVE_STEPS, sha256=sha), "sqlite_sha256") == sha
    # Killed at the stop: the file was never read, so there is nothing to prove it against.
    assert noted(journal("move-to-postgres", MOVE, "stop server"), "sqlite_sha256") is None


def test_recover_names_the_target_again_only_as_the_run_named_it(monkeypatch):
    monkeypatch.delenv("LETTA_OPS_MOVE_TO_URI", raising=False)
    with pytest.raises(Refused, match="LETTA_OPS_MOVE_TO_URI") as missing:
        journaled_target(MOVE["moved_to"], None, "run-1")
    assert "run-1" in str(missing.value)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", TARGET_URI.replace("/moved", "/other"))
    with pytest.raises(
        Refused, match="moved into postgresql://letta:\\*\\*\\*@127.0.0.1:5432/moved"
    ) as other:
        journaled_target(MOVE["moved_to"], None, "run-1")
    assert "s3cret-pw" not in str(other.value) and "/other" in str(other.value)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", TARGET_URI)
    target = journaled_target(MOVE["moved_to"], None, "run-1")
    assert target.redacted_uri() == MOVE["moved_to"]
    assert target.letta_pg_uri() == TARGET_URI
