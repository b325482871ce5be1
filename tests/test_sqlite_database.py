"""How a SQLite database is named, which versions serve one, and the server's environment on
SQLite: rules that need no Letta install."""

from pathlib import Path

import pytest

from letta_ops.tasks.errors import Refused
from letta_ops.tasks.runtimes.process import server_environment, start_server
from letta_ops.tasks.sqlite.database import (
    InvalidSqliteDatabase,
    SqliteDatabase,
    SqliteNotServed,
    require_serves_sqlite,
    serves_sqlite,
)


@pytest.mark.parametrize(
    "reference",
    [
        "sqlite:////srv/op/.letta/sqlite.db",
        "sqlite+aiosqlite:////srv/op/.letta/sqlite.db",
        "/srv/op/.letta/sqlite.db",
        "/srv/op/.letta",
    ],
)
def test_the_forms_letta_shows_name_the_same_file(reference):
    database = SqliteDatabase.from_reference(reference)
    assert database.path == Path("/srv/op/.letta/sqlite.db")
    assert database.server_home == Path("/srv/op")
    assert database.uri == "sqlite:////srv/op/.letta/sqlite.db"


def test_tilde_is_the_operators_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert SqliteDatabase.from_reference("~/.letta/sqlite.db").server_home == tmp_path


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("", "empty"),
        ("relative/.letta/sqlite.db", "relative"),
        ("sqlite:///relative.db", "relative"),
        ("sqlite://host/x/.letta/sqlite.db", "four slashes"),
        ("postgresql://u:p@h/d", "four slashes"),
        ("/srv/op/letta.db", "opens no other file"),
        ("/srv/op/data/sqlite.db", "opens no other file"),
    ],
)
def test_a_file_no_letta_would_open_is_refused_in_one_sentence(reference, words):
    with pytest.raises(InvalidSqliteDatabase) as err:
        SqliteDatabase.from_reference(reference)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("version", "served"),
    [("0.11.3", True), ("0.11.7", True), ("0.12.1", False), ("0.16.2", False)],
)
def test_only_versions_before_0_12_serve_sqlite(version, served):
    assert serves_sqlite(version) is served


def test_a_version_past_sqlite_is_refused_before_anything_starts(tmp_path):
    message = (
        "Letta 0.14.0 no longer serves SQLite: move it to PostgreSQL first with "
        "`letta-ops move-to-postgres`."
    )
    with pytest.raises(SqliteNotServed) as err:
        require_serves_sqlite("0.14.0")
    assert str(err.value) == message
    assert isinstance(err.value, Refused)
    database = SqliteDatabase(path=tmp_path / ".letta" / "sqlite.db")
    # The refusal comes before any install (an empty cache dir stays empty) or start.
    cache = tmp_path / "cache"
    with pytest.raises(SqliteNotServed):
        start_server("0.14.0", None, tmp_path / "state", cache_dir=cache, sqlite=database)
    assert not cache.exists() and not (tmp_path / "state").exists()


def test_a_sqlite_server_gets_no_postgres_variable_even_from_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LETTA_PG_URI=postgresql://a:b@h:1/d\nLETTA_PG_HOST=h\nOPENAI_API_KEY=k\n")
    env = server_environment(None, tmp_path, env_file, {"LETTA_PG_DB": "letta"})
    assert not {k for k in env if k.startswith("LETTA_PG")}
    assert env["OPENAI_API_KEY"] == "k"
    assert env["HOME"] == str(tmp_path)


def test_the_profile_names_a_sqlite_server_by_letta_ops_sqlite_db(monkeypatch, tmp_path):
    from letta_ops.blocks.server_profile import ProfileError, load_profile

    monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:8283")
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", f"sqlite:///{tmp_path}/.letta/sqlite.db")
    monkeypatch.delenv("LETTA_PG_URI", raising=False)
    profile = load_profile(need_database=True)
    assert profile.database is None
    assert profile.sqlite.path == tmp_path / ".letta" / "sqlite.db"
    with pytest.raises(ProfileError, match="move-to-postgres"):
        profile.require_database()
    monkeypatch.setenv("LETTA_PG_URI", "postgresql://letta:pw@127.0.0.1:5432/letta")
    with pytest.raises(ProfileError, match="one database"):
        load_profile()


def _letta_like_file(path: Path, rows: int) -> None:
    import sqlite3
    from contextlib import closing

    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT)")
        conn.execute('CREATE TABLE "odd ""name""" (x INTEGER)')
        conn.executemany(
            "INSERT INTO agents VALUES (?, ?)", [(f"agent-{i}", f"AI/ML {i}") for i in range(rows)]
        )
        conn.commit()  # journal_mode cannot change inside a transaction
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        conn.execute("INSERT INTO agents VALUES ('agent-wal', 'only in the WAL')")


def test_the_online_copy_holds_what_the_wal_holds_and_counts_it(tmp_path):
    import sqlite3

    from letta_ops.tasks.sqlite.online_copy import integrity_problems, online_copy

    live = tmp_path / "live" / "sqlite.db"
    _letta_like_file(live, 50)
    # A writer holds the file open in WAL mode: the newest row lives in sqlite.db-wal.
    writer = sqlite3.connect(live)
    writer.execute("INSERT INTO agents VALUES ('agent-open', 'x')")
    writer.commit()
    try:
        copy = online_copy(live, tmp_path / "copy.db")
    finally:
        writer.close()
    assert copy.row_counts == {"agents": 52, 'odd "name"': 0}
    assert copy.alembic_revision is None
    assert integrity_problems(copy.path) == []
    # One self-contained file: the copy opens alone, without any -wal beside it.
    assert not (tmp_path / "copy.db-wal").exists()
    with sqlite3.connect(copy.path) as conn:
        assert conn.execute("SELECT name FROM agents WHERE id = 'agent-wal'").fetchone() == (
            "only in the WAL",
        )


def test_a_missing_file_is_refused_and_not_created(tmp_path):
    from letta_ops.tasks.sqlite.online_copy import SqliteMissing, online_copy

    missing = tmp_path / ".letta" / "sqlite.db"
    with pytest.raises(SqliteMissing, match="no SQLite database"):
        online_copy(missing, tmp_path / "copy.db")
    assert not missing.exists() and not (tmp_path / "copy.db").exists()


def test_integrity_check_finds_a_damaged_copy(tmp_path):
    from letta_ops.tasks.sqlite.online_copy import integrity_problems

    path = tmp_path / "sqlite.db"
    _letta_like_file(path, 2000)
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 3 + 64] = b"\xff" * 64  # a page of the table, overwritten
    path.write_bytes(bytes(data))
    assert integrity_problems(path)


def test_swap_in_checkpoints_the_old_wal_so_it_never_touches_the_new_file(tmp_path):
    import sqlite3
    import subprocess
    import sys

    from letta_ops.tasks.sqlite.file_swap import incoming_path, side_files, swap_in

    live = tmp_path / ".letta" / "sqlite.db"
    _letta_like_file(live, 10)
    # A server killed while it wrote: its last commit only in the WAL beside the file.
    killed = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute(\"INSERT INTO agents VALUES ('agent-late', 'late')\"); c.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed, str(live)], check=True)
    assert live.with_name("sqlite.db-wal").stat().st_size > 0
    replacement = incoming_path(live)
    with sqlite3.connect(replacement) as conn:
        conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO agents VALUES (?, ?)", [("a", "1"), ("b", "2")])
    conn.close()
    swap_in(replacement, live)
    assert not replacement.exists() and not side_files(live)
    with sqlite3.connect(live) as conn:
        assert conn.execute("SELECT id FROM agents ORDER BY id").fetchall() == [("a",), ("b",)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_set_goes_only_under_a_server_of_its_engine_and_a_version_that_serves_it(tmp_path):
    from types import SimpleNamespace

    from letta_ops.flows.steps.sqlite_restore import SqliteSetRefused, require_set_fits

    sqlite = SqliteDatabase(path=tmp_path / ".letta" / "sqlite.db")
    on_sqlite = SimpleNamespace(sqlite=sqlite, name="s")
    on_postgres = SimpleNamespace(sqlite=None, name="p")

    def manifest(engine, version="0.11.7"):
        return SimpleNamespace(engine=engine, letta_version=version, server="s", set_id="x")

    require_set_fits(on_sqlite, manifest("sqlite"))
    require_set_fits(on_postgres, manifest("postgresql", "0.16.2"))
    with pytest.raises(SqliteSetRefused, match="holds a postgresql database"):
        require_set_fits(on_sqlite, manifest("postgresql"))
    with pytest.raises(SqliteSetRefused, match="holds a sqlite database"):
        require_set_fits(on_postgres, manifest("sqlite"))
    with pytest.raises(SqliteNotServed, match="no longer serves SQLite"):
        require_set_fits(on_sqlite, manifest("sqlite", "0.14.0"))


def test_doctor_reads_a_sqlite_servers_file_side_files_and_version(tmp_path):
    import subprocess
    import sys

    from letta_ops.tasks.doctor.sqlite_checks import (
        check_sqlite_file,
        check_sqlite_side_files,
        check_sqlite_version,
    )

    sqlite = SqliteDatabase(path=tmp_path / ".letta" / "sqlite.db")
    assert check_sqlite_file(sqlite).status == "action"
    _letta_like_file(sqlite.path, 3)
    assert check_sqlite_file(sqlite).status == "ok"
    assert check_sqlite_side_files(sqlite, server_running=False).status == "ok"
    # A server killed mid-write leaves its last commit in the WAL only.
    killed = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute(\"INSERT INTO agents VALUES ('late', 'x')\"); c.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed, str(sqlite.path)], check=True)
    down = check_sqlite_side_files(sqlite, server_running=False)
    assert down.status == "action" and "sqlite.db-wal" in down.detail
    assert check_sqlite_side_files(sqlite, server_running=True).status == "ok"
    sqlite.letta_dir.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root writes anywhere: the mode proves nothing then
            assert check_sqlite_file(sqlite).status == "action"
    finally:
        sqlite.letta_dir.chmod(0o700)
    assert check_sqlite_version("0.11.7").status == "ok"
    moved = check_sqlite_version("0.16.2")
    assert moved.status == "action" and "move-to-postgres" in moved.fix
    assert check_sqlite_version(None).status == "skipped"


def test_runtime_start_refuses_a_version_past_sqlite_in_one_sentence(tmp_path, monkeypatch, capsys):
    from letta_ops.cli.main import main
    from letta_ops.tasks.errors import EXIT_BAD_INPUT

    monkeypatch.delenv("LETTA_PG_URI", raising=False)
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(tmp_path / "home" / ".letta"))
    monkeypatch.setenv("LETTA_OPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LETTA_OPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LETTA_OPS_RUNTIME", "process")
    assert main(["runtime", "start", "--version", "0.14.0"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Letta 0.14.0 no longer serves SQLite: move it to PostgreSQL first" in err
    assert not [p.name for p in tmp_path.iterdir()]  # no cache, no state, no HOME made
