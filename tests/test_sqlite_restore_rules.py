"""What ``restore`` refuses about a SQLite target before anything changes: a path no Letta
opens, something that is not a SQLite database, a target of the other engine, the options of
a PostgreSQL restore; and what ``rehearse`` says of a SQLite set.

Real files and a real (local) write-once store; no server is needed for any of these.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from types import SimpleNamespace

import pytest

from letta_ops.cli.main import main
from letta_ops.flows.rehearse import RehearsalRefused, require_rehearsable
from letta_ops.flows.steps.sqlite_restore_target import refuse_postgres_options, sqlite_preflight
from letta_ops.tasks.errors import EXIT_BAD_INPUT
from letta_ops.tasks.sets.admission import BackupSetRefused, require_dump
from letta_ops.tasks.sqlite.database import InvalidSqliteDatabase
from letta_ops.tasks.sqlite.restore_target import (
    SqliteTargetRefused,
    sqlite_target,
    sqlite_target_name,
    target_tables,
)
from letta_ops.tasks.store.local import LocalObjectStore
from tests.test_restore_rules import SET_A, write_set


def _home_file(tmp_path, name: str = "b"):
    path = tmp_path / name / ".letta" / "sqlite.db"
    path.parent.mkdir(parents=True)
    return path


def test_a_sqlite_target_must_be_a_file_letta_opens(tmp_path):
    with pytest.raises(SqliteTargetRefused, match="not a PostgreSQL database"):
        sqlite_target("postgresql://letta@127.0.0.1:5432/letta")
    with pytest.raises(InvalidSqliteDatabase, match="opens no other file"):
        sqlite_target(str(tmp_path / "copy.db"))
    with pytest.raises(InvalidSqliteDatabase, match="relative"):
        sqlite_target("home/.letta/sqlite.db")
    # The .letta directory names its file; nothing is created by naming it.
    target = sqlite_target(str(tmp_path / "b" / ".letta"))
    assert target.path == tmp_path / "b" / ".letta" / "sqlite.db"
    assert not (tmp_path / "b").exists()
    # Two homes of one name get two names (their locks and histories differ).
    other = sqlite_target(str(tmp_path / "x" / "b" / ".letta"))
    assert sqlite_target_name(target) != sqlite_target_name(other)
    assert sqlite_target_name(target).startswith("sqlite-b-")


def test_what_is_at_the_target_is_counted_or_refused(tmp_path):
    path = _home_file(tmp_path)
    target = sqlite_target(str(path))
    assert target_tables(target) == 0  # nothing there yet
    path.write_bytes(b"")
    assert target_tables(target) == 0  # an empty file: what sqlite3 leaves
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE agents (id TEXT)")
        conn.execute("CREATE TABLE messages (id TEXT)")
    assert target_tables(target) == 2
    path.unlink()
    path.write_bytes(b"agent notes, not a database\n" * 4)
    with pytest.raises(SqliteTargetRefused, match="not a SQLite database"):
        target_tables(target)
    assert path.read_bytes() == b"agent notes, not a database\n" * 4
    path.unlink()
    path.mkdir()
    with pytest.raises(SqliteTargetRefused, match="is not a file"):
        target_tables(target)


def test_a_set_goes_only_onto_its_own_engine():
    sqlite_set = SimpleNamespace(
        engine="sqlite", server="s", set_id="X", dump="d", objects={"d": None}
    )
    with pytest.raises(BackupSetRefused, match=r"--sqlite HOME/.letta/sqlite.db") as refused:
        require_dump(sqlite_set)
    assert str(refused.value).count(".") >= 1 and "\n" not in str(refused.value)
    pg_set = SimpleNamespace(
        engine="postgresql", server="p", set_id="Y", dump="d", objects={"d": None}
    )
    with pytest.raises(BackupSetRefused, match=r"restore p/Y --database URI_OR_BLOCK"):
        require_dump(pg_set, "sqlite")


def test_a_postgresql_set_onto_a_sqlite_file_is_refused_with_the_file_unchanged(
    tmp_path, monkeypatch
):
    for name in ("LETTA_OPS_SQLITE_DB", "LETTA_PG_URI", "LETTA_OPS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    store = LocalObjectStore(tmp_path / "repo")
    write_set(store, "prod", SET_A, [("agent-1", "a")])
    path = _home_file(tmp_path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE agents (id TEXT)")
    before = path.read_bytes()
    with pytest.raises(BackupSetRefused, match="holds a postgresql database"):
        sqlite_preflight.fn(store, f"prod/{SET_A}", str(path), None, True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["sqlite.db"]
    # No --sqlite and no SQLite server in the profile: which target is meant is asked for.
    with pytest.raises(SqliteTargetRefused, match="Name the restore's target"):
        sqlite_preflight.fn(store, f"prod/{SET_A}", None, None, False)


def test_postgresql_options_are_refused_for_a_sqlite_target():
    refuse_postgres_options(None, False, None, None, None, None)
    with pytest.raises(SqliteTargetRefused, match="--start, --port apply to a PostgreSQL"):
        refuse_postgres_options(None, True, 8300, None, None, None)


def test_cli_refuses_a_sqlite_target_that_is_no_letta_file_before_any_run(tmp_path, capsys):
    code = main(["restore", "x", "--sqlite", str(tmp_path / "copy.db")])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HOME/.letta/sqlite.db" in err[0]
    path = _home_file(tmp_path)
    path.write_bytes(b"not sqlite at all")
    code = main(["restore", "x", "--sqlite", str(path)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a SQLite database" in err[0]
    assert path.read_bytes() == b"not sqlite at all"
    with pytest.raises(SystemExit) as parsed:  # one target engine per restore
        main(["restore", "x", "--sqlite", str(path), "--database", "letta-db"])
    assert parsed.value.code == 2


def test_rehearse_says_why_a_sqlite_server_or_set_has_no_rehearsal():
    on_postgres = SimpleNamespace(sqlite=None, name="prod")
    require_rehearsable(on_postgres, "postgresql", "prod/X")
    with pytest.raises(RehearsalRefused, match="move to PostgreSQL first, which has no"):
        require_rehearsable(on_postgres, "sqlite", "lite/X")
    with pytest.raises(RehearsalRefused, match="keeps its data in SQLite"):
        require_rehearsable(SimpleNamespace(sqlite=object(), name="lite"), "sqlite", "")


def test_a_sqlite_restore_plan_says_the_file_is_replaced_not_emptied():
    from letta_ops.cli.restore import render_restore_plan
    from letta_ops.flows.reports.restore import RestoreReport

    plan = {
        "set": "lite/20261207T000000Z-abcd1234",
        "set_created_at": "2026-12-07T00:00:00+00:00",
        "letta_version": "0.11.7",
        "target": "/srv/b/.letta/sqlite.db",
        "target_tables_before": 41,
        "replaces_existing": True,
        "reset_mode": "sqlite: the checked copy renamed over the file",
        "objects_verified": 4,
        "tables": 41,
        "rows": 92,
        "agents_in_set": 5,
        "start": False,
        "base_url": None,
        "server_name": "sqlite-b-0a1b2c3d",
        "engine": "sqlite",
    }
    text = render_restore_plan(RestoreReport(plan=plan, dry_run=True, outcome="planned"))
    assert "DROPS and replaces the file (41 tables), the checked copy renamed over it" in text
    assert "emptied by" not in text and "then start" not in text


def test_a_file_another_process_reads_is_not_swapped_under_it(tmp_path):
    import subprocess
    import sys

    from letta_ops.tasks.sqlite.file_swap import incoming_path, side_files, swap_in
    from letta_ops.tasks.sqlite.online_copy import SqliteCopyFailed

    path = _home_file(tmp_path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE operator_notes (note text)")
        conn.execute("INSERT INTO operator_notes VALUES ('keep me')")
    reader = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute(\"INSERT INTO operator_notes VALUES ('in the WAL')\"); "
        "c.execute('BEGIN'); c.execute('SELECT count(*) FROM operator_notes').fetchone(); "
        "print('reading', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", reader, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "reading"
        incoming = incoming_path(path)
        with closing(sqlite3.connect(incoming)) as conn:
            conn.execute("CREATE TABLE agents (id TEXT)")
            conn.commit()
        sides = sorted(p.name for p in side_files(path))
        with pytest.raises(SqliteCopyFailed, match="open in another process"):
            swap_in(incoming, path, settle_timeout=0.5)
        # Its side files still there (the reader reads through them), its content the same.
        assert (
            sorted(p.name for p in side_files(path)) == sides == ["sqlite.db-shm", "sqlite.db-wal"]
        )
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT note FROM operator_notes ORDER BY rowid").fetchall()
        assert rows == [("keep me",), ("in the WAL",)] and incoming.exists()
    finally:
        holder.kill()
        holder.wait()
    swap_in(incoming, path, settle_timeout=0.5)  # the reader gone: the copy goes in
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("agents",)]
