"""``upgrade --to X`` of a SQLite server: the refusals made before anything is asked of the
server, the profile change it prints (never a password), and the plan as the CLI shows it
(both parts: the move, then the migration). The run itself: tests/test_move_to_postgres_e2e.py.
"""

from __future__ import annotations

import json

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.blocks.server_profile import load_profile
from letta_ops.cli.main import build_parser
from letta_ops.cli.output import to_json
from letta_ops.cli.upgrade import render_plan, render_upgrade
from letta_ops.flows.reports.upgrade import UpgradeReport, render_upgrade_markdown
from letta_ops.flows.steps.sqlite_upgrade import (
    plan_sqlite_upgrade,
    profile_change,
    refuse_move_target_on_postgres,
)
from letta_ops.tasks.errors import Refused
from tests.test_upgrade_reports import UPGRADE_PLAN

PASSWORD = "s3cr3t-Pw"
TARGET_URI = f"postgresql://letta:{PASSWORD}@127.0.0.1:5499/letta_moved"


@pytest.fixture
def sqlite_profile(monkeypatch, tmp_path):
    """A SQLite server's profile from the environment, its server unreachable (port 9): every
    refusal here must come before the server or a database is asked anything."""
    for name in ("LETTA_PG_URI", "LETTA_OPS_MOVE_TO_URI", "LETTA_OPS_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(tmp_path / "home" / ".letta"))
    monkeypatch.setenv("LETTA_OPS_STATE_DIR", str(tmp_path / "state"))
    profile = load_profile(need_database=True)
    assert profile.sqlite is not None and profile.database is None
    return profile


def test_without_a_target_the_refusal_names_the_option_and_the_variable(sqlite_profile):
    with pytest.raises(Refused) as refused:
        plan_sqlite_upgrade(sqlite_profile, "0.16.2", "migrate", None)
    sentence = str(refused.value)
    assert "--to-database BLOCK" in sentence and "LETTA_OPS_MOVE_TO_URI=" in sentence
    assert "Letta 0.16.2 no longer serves" in sentence and sqlite_profile.name in sentence
    assert sentence.count(". ") == 0 and sentence.endswith(".")  # one sentence


@pytest.mark.parametrize(
    "to_version,strategy,words",
    [
        ("0.11.9", "migrate", "still serves SQLite"),
        ("0.16.2", "rebuild", "drop --strategy rebuild"),
    ],
)
def test_what_a_sqlite_server_cannot_upgrade_by_is_refused_first(
    sqlite_profile, monkeypatch, to_version, strategy, words
):
    # A target is named: the refusal is about the version or the strategy, not the target.
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", TARGET_URI)
    with pytest.raises(Refused, match=words):
        plan_sqlite_upgrade(sqlite_profile, to_version, strategy, None)


def test_a_postgres_server_refuses_the_move_target_instead_of_ignoring_it(
    sqlite_profile, monkeypatch
):
    refuse_move_target_on_postgres(sqlite_profile, "pg-new")  # a SQLite server: its target
    monkeypatch.delenv("LETTA_OPS_SQLITE_DB")
    monkeypatch.setenv("LETTA_PG_URI", TARGET_URI)
    on_postgres = load_profile(need_database=True)
    refuse_move_target_on_postgres(on_postgres, None)
    with pytest.raises(Refused, match="drop --to-database") as refused:
        refuse_move_target_on_postgres(on_postgres, "pg-new")
    assert PASSWORD not in str(refused.value)


def test_the_upgrade_command_takes_the_moves_target_option():
    args = build_parser().parse_args(["upgrade", "--to", "0.16.2", "--to-database", "pg-new"])
    assert args.to_database == "pg-new"
    assert build_parser().parse_args(["upgrade", "--to", "0.16.2"]).to_database is None


@pytest.mark.parametrize("block", [None, "pg-new"])
def test_the_profile_change_names_both_variables_and_never_the_password(sqlite_profile, block):
    target = LettaDatabase.from_env({"LETTA_PG_URI": TARGET_URI})
    lines = profile_change(sqlite_profile, target, block)
    text = "\n".join(lines)
    assert lines[0].startswith("unset LETTA_OPS_SQLITE_DB")
    assert "set LETTA_PG_URI to postgresql://letta:***@127.0.0.1:5499/letta_moved" in text
    assert ("'pg-new'" in text) == (block is not None)
    assert ("LETTA_OPS_MOVE_TO_URI" in text) == (block is None)
    assert PASSWORD not in text


def _move(dry_run: bool) -> dict:
    return {
        "server": "prod",
        "version": "0.11.7",
        "sqlite_file": "/home/op/.letta/sqlite.db",
        "target": "postgresql://letta:***@127.0.0.1:5499/letta_moved",
        "dry_run": dry_run,
        "tables": [
            {"name": "agents", "action": "copy", "rows": 6, "bytes": 8192},
            {"name": "message_sequence", "action": "skip", "rows": 1, "bytes": 4096},
        ],
        "rows": 6,
        "bytes": 8192,
        "expected_seconds": 55.0,
        "now_on": "sqlite" if dry_run else "postgresql",
    }


def test_the_plan_shows_the_move_then_the_migration_and_the_result_the_profile_change():
    plan = {
        **UPGRADE_PLAN,
        "strategy": "migrate",
        "lossy": False,
        "renames": {},
        "transit_renames": {},
        "steps": ["backup (SQLite online copy, verified, pinned)", "stop server", "move: ..."],
    }
    planned = UpgradeReport(plan=plan, dry_run=True, outcome="planned", move=_move(True))
    text = render_plan(planned)
    assert (
        "move from SQLite first: /home/op/.letta/sqlite.db -> "
        "postgresql://letta:***@127.0.0.1:5499/letta_moved, 6 rows, 8192 bytes, about 55 s"
    ) in text
    assert "1. backup (SQLite online copy" in text
    assert "(planned)" in render_upgrade_markdown(planned)
    assert json.loads(to_json(planned, versioned=True))["move"]["rows"] == 6

    done = UpgradeReport(plan=plan, dry_run=False, outcome="succeeded", move=_move(False))
    done.profile_change = ["unset LETTA_OPS_SQLITE_DB", "set LETTA_PG_URI to X"]
    text = render_upgrade(done)
    assert "change the server's profile for the next runs:\n  unset LETTA_OPS_SQLITE_DB" in text
    markdown = render_upgrade_markdown(done)
    assert "- moved from SQLite first (/home/op/.letta/sqlite.db, Letta 0.11.7): 6 rows of " in (
        markdown
    )
    assert "1 tables into postgresql://letta:***@" in markdown
    assert "- profile: set LETTA_PG_URI to X" in markdown
    # A PostgreSQL server's report says nothing of either.
    plain = UpgradeReport(plan=plan, dry_run=False, outcome="succeeded")
    text = render_upgrade(plain)
    assert "move from SQLite" not in text and "profile" not in text
