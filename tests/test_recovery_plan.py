"""The decision ``letta-ops recover`` takes, from a journal, a revision and a running version."""

from __future__ import annotations

import stat
from datetime import UTC, datetime

from letta_ops.tasks.runs.journal import JournalEntry
from letta_ops.tasks.runs.recovery_plan import plan_recovery
from letta_ops.tasks.runtimes.install import private_directory

UPGRADE = {
    "backup_set": "prod/20261123T010000Z-abc",
    "from_version": "0.14.0",
    "to_version": "0.16.2",
    "strategy": "migrate",
    "reset_mode": "in-place",
    "target_revision": "27de0f58e076",
}


def journal(operation: str, facts: dict, *events: tuple[str, str]) -> list[JournalEntry]:
    def entry(event: str, step: str, details: dict | None = None) -> JournalEntry:
        return JournalEntry(
            "run-1", "prod", operation, step, event, datetime.now(UTC), "h", 1, details or {}
        )

    return [entry("begin", "begin", facts), *(entry(e, s) for e, s in events)]


def test_killed_during_migration_restores_the_set_taken_before():
    j = journal(
        "upgrade",
        UPGRADE,
        ("start", "stop server"),
        ("end", "stop server"),
        ("start", "alembic upgrade to 0.16.2"),
    )
    plan = plan_recovery(j, revision="b1c2d3e4f5a6", running_version=None)
    assert plan.action == "restore" and plan.backup_set == UPGRADE["backup_set"]
    assert plan.version == "0.14.0" and plan.interrupted_at == "alembic upgrade to 0.16.2"
    assert not plan.step_ended


def test_database_at_the_target_head_finishes_forward():
    j = journal(
        "upgrade",
        UPGRADE,
        ("start", "alembic upgrade to 0.16.2"),
        ("end", "alembic upgrade to 0.16.2"),
        ("start", "start 0.16.2"),
    )
    plan = plan_recovery(j, revision="27de0f58e076", running_version=None)
    assert plan.action == "finish-forward" and plan.version == "0.16.2"


def test_a_rebuild_at_the_target_head_without_every_import_is_restored():
    facts = {**UPGRADE, "strategy": "rebuild"}
    j = journal(
        "upgrade",
        facts,
        ("start", "start 0.16.2"),
        ("end", "start 0.16.2"),
        ("start", "import agent files"),
    )
    assert plan_recovery(j, "27de0f58e076", "0.16.2").action == "restore"
    done = j + journal("upgrade", facts, ("end", "import agent files"))[1:]
    assert plan_recovery(done, "27de0f58e076", "0.16.2").action == "finish-forward"


def test_nothing_destructive_started():
    j = journal("upgrade", UPGRADE)
    assert plan_recovery(j, "b1c2d3e4f5a6", None).action == "start"
    assert plan_recovery(j, "b1c2d3e4f5a6", "0.14.0").action == "close"


def test_a_rollback_finishes_forward_only_once_the_dump_is_restored():
    facts = {
        "backup_set": "prod/safety",
        "from_version": "0.16.2",
        "to_version": "0.14.0",
        "target_set": "prod/pre-upgrade",
        "target_revision": "b1c2d3e4f5a6",
    }
    during = journal("rollback", facts, ("start", "restore the set's dump"))
    plan = plan_recovery(during, "b1c2d3e4f5a6", None)
    assert plan.action == "restore" and plan.backup_set == "prod/safety"
    assert plan.version == "0.16.2"
    after = journal(
        "rollback",
        facts,
        ("start", "restore the set's dump"),
        ("end", "restore the set's dump"),
        ("start", "start 0.14.0"),
    )
    plan = plan_recovery(after, "b1c2d3e4f5a6", None)
    assert plan.action == "finish-forward" and plan.target_set == "prod/pre-upgrade"


def test_state_directories_are_private(tmp_path):
    path = private_directory(tmp_path / "state" / "home")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    assert stat.S_IMODE(private_directory(path).stat().st_mode) == 0o700


def test_a_failed_tool_is_named_by_its_final_error_line():
    from letta_ops.tasks.errors import final_error_line

    traceback = (
        "INFO  [alembic.runtime.migration] Running upgrade a -> b\n"
        "Traceback (most recent call last):\n"
        '  File "/venv/bin/alembic", line 8, in <module>\n'
        "    sys.exit(main())\n"
        "sqlalchemy.exc.ProgrammingError: (psycopg.errors.InsufficientPrivilege) "
        "permission denied for schema public\n"
        "[SQL: CREATE TABLE x (id int)]\n"
        "(Background on this error at: https://sqlalche.me/e/20/f405)\n"
    )
    assert final_error_line(traceback) == (
        "sqlalchemy.exc.ProgrammingError: (psycopg.errors.InsufficientPrivilege) "
        "permission denied for schema public"
    )
    assert final_error_line("pg_restore: error: one\npg_restore: error: last\n") == (
        "pg_restore: error: last"
    )


def test_an_interrupted_restore_onto_another_database_is_rerun_by_its_operator():
    facts = {"set": "prod/20261123T010000Z-abc", "target": "postgresql://u:***@h:5432/staging"}
    j = journal("restore", facts, ("start", "restore the set's dump"))
    plan = plan_recovery(j, revision=None, running_version=None)
    assert plan.action == "rerun" and "--force" in plan.reason and "staging" in plan.reason


def test_an_interrupted_sqlite_restore_puts_the_copy_there_again():
    facts = {
        "set": "lite/20261207T010000Z-abc",
        "target": "/srv/b/.letta/sqlite.db",
        "engine": "sqlite",
        "to_version": "0.11.7",
    }
    j = journal("restore", {**facts, "start": False}, ("start", "restore the set's dump"))
    plan = plan_recovery(j, revision=None, running_version=None)
    assert plan.action == "restore" and plan.backup_set == facts["set"]
    assert plan.version is None  # a file no server runs on: nothing to start
    assert "/srv/b/.letta/sqlite.db" in plan.reason and "start Letta" not in plan.reason
    # On the profile's own server the set's version is started again, wherever it stopped.
    j = journal("restore", {**facts, "start": True}, ("end", "stop server"))
    plan = plan_recovery(j, revision=None, running_version="0.11.7")
    assert plan.action == "restore" and plan.version == "0.11.7"
    assert "start Letta 0.11.7" in plan.reason
