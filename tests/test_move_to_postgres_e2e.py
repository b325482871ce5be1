"""``move-to-postgres``: a real Letta 0.11.7 SQLite server into PostgreSQL 16 and 18, at the
same version, then ``upgrade --to 0.16.2`` there; and a failure injected mid-copy (a trigger
on ``messages`` the target's own event trigger adds) that leaves the server on SQLite, and a
``kill -9`` of the command line inside the copy that ``recover`` undoes (back on SQLite, the
target emptied of the move's objects only, a second ``recover`` with nothing to do). Then
the one-command ``upgrade --to 0.16.2`` of a SQLite server (move, then migrate): into
PostgreSQL 18 with a failure injected into its migration (back on SQLite, one undo) and killed
in its migration, then ``recover`` (back on SQLite); then into PostgreSQL 16, in full.

Every table's content is compared with the tests' own queries on both sides (``sqlite3`` and
pg8000, the values normalised here by the PostgreSQL column type), never with the product's
counts. Cells: engine SQLite -> PostgreSQL 16 (the flow, the restart, the upgrade, the move
killed and recovered; the one-command upgrade in full) and 18 (the copy of the same file into
the schema 0.11.7 builds; the one-command upgrade's undo, and its kill and recover);
runtime letta-ops' process runtime; role superuser; loopback plaintext.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import pg8000.native
import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.cli.main import main
from letta_ops.flows.move_to_postgres import move_to_postgres
from letta_ops.flows.recover import recover
from letta_ops.flows.reports.move import render_move_markdown
from letta_ops.flows.steps.move_steps import COPY_STEP
from letta_ops.flows.steps.upgrade_steps import UpgradeRefused
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.move.row_copy import copy_all_rows
from tests.fixtures.kill_run import kill_when_step_begins, letta_ops
from tests.fixtures.letta import NEW_VERSION
from tests.fixtures.oracle import (
    http_agents,
    http_version,
    sql_agents,
    sql_execute,
    sql_scalar,
)
from tests.fixtures.postgres import owner_database
from tests.fixtures.shared_database import share_database, untouched_digests
from tests.fixtures.sqlite_letta import SQLITE_AGENT_NAMES, SQLITE_VERSION
from tests.fixtures.sqlite_oracle import (
    REWRITTEN_AT_START,
    sqlite_agent_messages,
    sqlite_table_counts,
    sqlite_table_digests,
)

pytestmark = pytest.mark.e2e


def _on_each_message_insert(name: str, body: str) -> tuple[str, ...]:
    """Statements that make the target database run ``body`` (plpgsql) before every row
    inserted into ``messages``, from the moment alembic creates that table."""
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$",
        f"""CREATE FUNCTION add_{name}() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE c record;
BEGIN
  FOR c IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF c.object_identity = 'public.messages' AND c.command_tag = 'CREATE TABLE' THEN
      EXECUTE 'CREATE TRIGGER {name} BEFORE INSERT ON public.messages '
              'FOR EACH ROW EXECUTE FUNCTION {name}()';
    END IF;
  END LOOP;
END $$""",
        f"""CREATE EVENT TRIGGER add_{name} ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION add_{name}()""",
    )


#: A fault the target database injects into itself: every insert into ``messages`` refused, so
#: the move fails in the middle of its copy (``messages`` comes after some thirty tables).
FAULT_SQL = _on_each_message_insert(
    "refuse_insert", "RAISE EXCEPTION 'injected fault: insert into %', TG_TABLE_NAME;"
)

#: A copy held open for the kill: each row into ``messages`` waits 0.5 s, so the copy (one
#: transaction) is still running when the test's poll of the journal sees its step begin, however
#: loaded the host. Without it a small database's copy could commit inside the poll's interval
#: (CI: 4 agents already there at the kill).
SLOW_COPY_SQL = _on_each_message_insert("slow_insert", "PERFORM pg_sleep(0.5); RETURN NEW;")


def _when_conversations_created(name: str, body: str) -> tuple[str, ...]:
    """Statements that make the target database run ``body`` (plpgsql) when 0.16.2's last
    migration creates ``conversations``: after the move has filled the database and most
    migrations ran."""
    return (
        f"""CREATE FUNCTION {name}() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE c record;
BEGIN
  FOR c IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF c.object_identity = 'public.conversations' AND c.command_tag = 'CREATE TABLE' THEN
      {body}
    END IF;
  END LOOP;
END $$""",
        f"""CREATE EVENT TRIGGER {name} ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION {name}()""",
    )


#: A fault in the upgrade's second part: the target refuses ``conversations``.
MIGRATION_FAULT_SQL = _when_conversations_created(
    "refuse_conversations", "RAISE EXCEPTION 'injected fault: CREATE TABLE conversations';"
)

#: A migration held open for the kill: the target waits 60 s when ``conversations`` is created,
#: so a kill a few seconds after the migration's step begins lands inside it on a quiet host as
#: on a loaded one (the migration alone takes about 5 s).
SLOW_MIGRATION_SQL = _when_conversations_created("hold_conversations", "PERFORM pg_sleep(60);")


def _hold_for_the_kill(db: LettaDatabase, statements: tuple[str, ...]) -> None:
    """Plant ``statements`` in ``db``; its sessions check every 200 ms for a vanished client,
    so the killed run's session ends at once instead of finishing its wait."""
    for statement in statements:
        sql_execute(db, statement)
    sql_execute(
        db,
        f"ALTER DATABASE {db.parts['database']} SET client_connection_check_interval = '200ms'",
    )


def _serving_on_sqlite(running, path: Path, s3_bucket, monkeypatch) -> tuple:
    """The SQLite server just started, as letta-ops' environment names it (no LETTA_PG_URI),
    and what the test compares against: (running, base URL, agents by the API, messages per
    agent and rows per table by the tests' own sqlite3)."""
    base_url = running.server.base_url
    for name, value in {
        "LETTA_BASE_URL": base_url,
        "LETTA_OPS_SERVER_NAME": running.runtime.server_name,
        "LETTA_OPS_STATE_DIR": str(running.runtime.state_dir.parent),
        "LETTA_OPS_STORE": f"s3://{s3_bucket[1]}/backups",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LETTA_PG_URI", raising=False)
    return (
        running,
        base_url,
        http_agents(base_url),
        sqlite_agent_messages(path),
        sqlite_table_counts(path),
    )


def _pg(db: LettaDatabase) -> pg8000.native.Connection:
    p = db.parts
    return pg8000.native.Connection(
        user=str(p["user"]),
        password=str(p["password"]),
        host=str(p["host"]),
        port=int(p["port"]),
        database=str(p["database"]),
        ssl_context=db.tls().ssl_context(),
    )


def _float32s(values) -> list[float]:
    """Each value as the float4 it stands for: pgvector prints a float4's shortest decimal,
    which reads back to the same float4, so the comparison is exact, not rounded."""
    return [struct.unpack("<f", struct.pack("<f", float(x)))[0] for x in values]


def _canonical(value, pg_type: str):
    """One value as this test compares it, from either side."""
    if value is None:
        return None
    if pg_type == "bool":
        return bool(int(value)) if isinstance(value, int | str) else bool(value)
    if pg_type in ("timestamptz", "timestamp"):
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    if pg_type in ("json", "jsonb"):
        return json.loads(value) if isinstance(value, str | bytes) else value
    if pg_type == "vector":
        if isinstance(value, bytes):
            floats = struct.unpack(f"<{len(value) // 4}f", value)
        else:
            floats = json.loads(value)
        return _float32s(floats)
    return value


def _content(sqlite_path, db: LettaDatabase, migrated: bool = False) -> tuple[dict, dict]:
    """Each copied table's rows, canonical and sorted, from both sides (the tests' own SQL);
    ``migrated``: only the columns both sides still have (a later version dropped some)."""
    conn = _pg(db)
    try:
        types = {}
        for table, column, udt in conn.run(
            "SELECT table_name, column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ):
            types.setdefault(table, {})[column] = udt
        source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
        sqlite_side, pg_side = {}, {}
        tables = [
            t
            for (t,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if t in types and t != "alembic_version"
        ]
        for table in tables:
            columns = [
                r[1]
                for r in source.execute(f'PRAGMA table_info("{table}")')
                if not migrated or r[1] in types[table]
            ]
            names = ", ".join(f'"{c}"' for c in columns)
            kinds = [types[table][c] for c in columns]

            def rows(raw, kinds=kinds):
                return sorted(
                    repr([_canonical(v, k) for v, k in zip(row, kinds, strict=True)]) for row in raw
                )

            sqlite_side[table] = rows(source.execute(f'SELECT {names} FROM "{table}"'))
            text_names = ", ".join(
                f'"{c}"::text' if k == "vector" else f'"{c}"'
                for c, k in zip(columns, kinds, strict=True)
            )
            pg_side[table] = rows(conn.run(f'SELECT {text_names} FROM "{table}"'))
        source.close()
    finally:
        conn.close()
    return sqlite_side, pg_side


def _names(sqlite_path, table: str) -> set[str]:
    with sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True) as source:
        return {name for (name,) in source.execute(f'SELECT name FROM "{table}"')}


def _pg_rows(db: LettaDatabase, query: str) -> list:
    conn = _pg(db)
    try:
        return conn.run(query)
    finally:
        conn.close()


def _public_relations(db: LettaDatabase) -> int:
    """Tables, sequences and views left in ``public`` (the tests' own SQL): an undone or
    recovered move leaves none there."""
    return _pg_rows(
        db,
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'S', 'v', 'm')",
    )[0][0]


def _checksum(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant_archival_passage(path) -> list[float]:
    """An archive and one archival passage written as Letta 0.11.7 writes them on SQLite
    (its embedding padded to 4096 float32s in sqlite-vec's blob), so the move's embedding
    conversion runs on a real row: the seeded agents have no passages (no embedding model
    answers here)."""
    embedding = [round(math.sin(i) / 3, 6) for i in range(1536)] + [0.0] * (4096 - 1536)
    conn = sqlite3.connect(path)
    try:
        (org,) = conn.execute("SELECT id FROM organizations").fetchone()
        conn.execute(
            "INSERT INTO archives (id, name, vector_db_provider, metadata_, organization_id) "
            "VALUES ('archive-moved', 'Café memories', 'NATIVE', '{}', ?)",
            (org,),
        )
        conn.execute(
            "INSERT INTO archival_passages (id, text, embedding_config, metadata_, tags, "
            "embedding, organization_id, archive_id) VALUES ('passage-moved', 'Ñandú notes', "
            "?, '{}', '[\"moved\"]', ?, ?, 'archive-moved')",
            (
                json.dumps({"embedding_model": "text-embedding-3-small", "embedding_dim": 1536}),
                struct.pack("<4096f", *embedding),
                org,
            ),
        )
        conn.commit()
    finally:
        conn.close()
    return embedding


def test_copy_into_postgres_18_keeps_every_row(sqlite_letta_copy, letta_template):
    """PostgreSQL 18: the real file into the schema 0.11.7's alembic builds; content equal,
    an archival passage's embedding among it."""
    path = sqlite_letta_copy.path
    embedding = _plant_archival_passage(path)
    before = _checksum(path)
    target = letta_template(SQLITE_VERSION, "move18")
    started = time.monotonic()
    result = copy_all_rows(path, target, batch_rows=3)  # batches smaller than most tables
    print(f"\ncopy into PG 18: {time.monotonic() - started:.1f} s, {len(result.order)} tables")
    sqlite_side, pg_side = _content(path, target)
    assert sum(len(rows) for rows in sqlite_side.values()) > 50
    assert sqlite_side == pg_side
    assert len(pg_side["archival_passages"]) == 1
    conn = _pg(target)
    try:
        [[dims, text]] = conn.run(
            "SELECT vector_dims(embedding), embedding::text FROM archival_passages"
        )
    finally:
        conn.close()
    assert dims == 4096
    assert _float32s(json.loads(text)) == _float32s(embedding)
    assert {a.name for a in sql_agents(target).values()} == set(SQLITE_AGENT_NAMES)
    assert _checksum(path) == before


def test_move_to_postgres_16_then_upgrade_and_a_fault_mid_copy(
    sqlite_letta_copy,
    start_sqlite_letta,
    pg16_cluster,
    make_database,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
):
    path = sqlite_letta_copy.path
    running, base_url, agents_before, messages_before, counts = _serving_on_sqlite(
        start_sqlite_letta("move-16"), path, s3_bucket, monkeypatch
    )
    assert sorted(agents_before.values()) == sorted(SQLITE_AGENT_NAMES)

    # --- a non-empty target is refused before anything stops --------------------------------
    busy = make_database("move_busy", cluster=pg16_cluster)
    sql_execute(busy, "CREATE TABLE agents (id int)")  # a table of Letta's name
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", busy.letta_pg_uri())
    pid = running.runtime.status()["pid"]
    assert main(["move-to-postgres", "--sqlite", str(path), "--dry-run"]) == 2
    assert running.runtime.status()["pid"] == pid

    # --- a failure in the middle of the copy: back on SQLite, the file unchanged -------------
    faulty = make_database("move_fault", cluster=pg16_cluster)
    for statement in FAULT_SQL:
        sql_execute(faulty, statement)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", faulty.letta_pg_uri())
    digests = sqlite_table_digests(path)
    started = time.monotonic()
    with pytest.raises(Exception, match="injected fault"):
        move_to_postgres(str(path))
    print(f"\nfailed move and put back: {time.monotonic() - started:.1f} s")
    # Letta's own start upserts its base tools (updated_at): every other table is as it was.
    after_fault = sqlite_table_digests(path)
    assert {t for t in digests if digests[t] != after_fault[t]} <= {"tools"}
    assert sqlite_table_counts(path) == counts
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    status = running.runtime.status()
    assert status["running"]
    assert _public_relations(faulty) == 0

    # --- kill -9 of the command line inside the copy, then recover: back on SQLite ------------
    # The target is shared: the operator's own schema beside Letta's, which recover leaves alone.
    killed_target = make_database("move_killed", cluster=pg16_cluster)
    sql_execute(killed_target, "CREATE SCHEMA auth")
    sql_execute(killed_target, "CREATE TABLE auth.users (id int, name text)")
    sql_execute(killed_target, "INSERT INTO auth.users VALUES (1, 'Café Ñandú')")
    _hold_for_the_kill(killed_target, SLOW_COPY_SQL)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", killed_target.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(path))  # the profile names the file
    digests = sqlite_table_digests(path)
    started = time.monotonic()
    proc = letta_ops("move-to-postgres")
    killed = kill_when_step_begins(proc, running.runtime.server_name, COPY_STEP, 0.0)
    shown = [f"move killed inside the copy after {time.monotonic() - started:.1f} s"]
    at_kill = _checksum(path)  # the server is down: nothing writes to the file now
    as_killed = path.parent.parent / "as-killed.db"
    shutil.copyfile(path, as_killed)
    assert sqlite_table_digests(path) == digests
    # alembic's schema was committed, the copy (one transaction) was not.
    assert sql_scalar(killed_target, "SELECT count(*) FROM alembic_version") == 1
    assert sql_scalar(killed_target, "SELECT count(*) FROM agents") == 0
    started = time.monotonic()
    recovered = recover()
    shown.append(f"recover: {time.monotonic() - started:.1f} s, {recovered.result.done}")
    assert recovered.outcome == "recovered" and recovered.interrupted_run == killed
    assert recovered.plan.action == "back-on-sqlite"
    assert recovered.plan.interrupted_at == COPY_STEP
    assert recovered.result.ok and recovered.result.dropped > 0
    # The file recover proved before starting on it is the file as the kill left it, byte for
    # byte; the start then rewrites only the base tools' updated_at, as every 0.11.7 start does.
    assert recovered.result.sqlite_sha256 == at_kill
    assert sqlite_table_digests(path, REWRITTEN_AT_START) == sqlite_table_digests(
        as_killed, REWRITTEN_AT_START
    )
    assert sqlite_table_counts(path) == counts
    assert _public_relations(killed_target) == 0
    assert _pg_rows(killed_target, "SELECT id, name FROM auth.users") == [[1, "Café Ñandú"]]
    assert sql_scalar(killed_target, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    [record] = AuditStore.from_env().find(killed)
    assert record.outcome == "crashed" and COPY_STEP in record.error
    assert recover().outcome == "nothing to recover"
    print("\n" + "\n".join(shown))
    monkeypatch.delenv("LETTA_OPS_SQLITE_DB")

    # --- the plan, then the move into PostgreSQL 16 -----------------------------------------
    target = make_database("move16", cluster=pg16_cluster)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", target.letta_pg_uri())
    plan = move_to_postgres(str(path), dry_run=True)
    assert plan.dry_run and plan.rows > 50 and plan.expected_seconds > 0
    assert {t.name for t in plan.tables if t.action == "skip"} == {"message_sequence"}
    started = time.monotonic()
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(path))  # the profile names the file
    report = move_to_postgres()
    print(f"move into PG 16: {time.monotonic() - started:.1f} s; phases {report.phases}")
    print(render_move_markdown(report))  # the per-table table the issue note cites
    assert report.now_on == "postgresql"
    assert report.sqlite_sha256_before == report.sqlite_sha256_after == _checksum(path)
    assert sqlite_table_counts(path) == counts
    sqlite_side, pg_side = _content(path, target)
    # The server's start on PostgreSQL rewrote two tables there, as it does on SQLite: its base
    # tools (upserted) and its local sandbox's directory (its new HOME). Those two are compared
    # by rows here and by content in the PostgreSQL 18 test, which starts no server.
    for rewritten_at_start in ("tools", "sandbox_configs"):
        assert len(sqlite_side.pop(rewritten_at_start)) == len(pg_side.pop(rewritten_at_start))
    assert sqlite_side == pg_side
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    moved = sql_agents(target)
    assert {a.name: a.messages for a in moved.values()} == messages_before
    status = running.runtime.status()
    assert status["running"]

    # --- the moved server upgrades in place to 0.16.2 -----------------------------------------
    monkeypatch.delenv("LETTA_OPS_SQLITE_DB")  # the operator's profile, switched
    monkeypatch.setenv("LETTA_PG_URI", target.letta_pg_uri())
    started = time.monotonic()
    assert main(["upgrade", "--to", NEW_VERSION, "--yes"]) == 0
    print(f"upgrade to {NEW_VERSION}: {time.monotonic() - started:.1f} s")
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == agents_before
    after = sql_agents(target)
    assert {i: (a.messages, a.blocks) for i, a in after.items()} == {
        i: (a.messages, a.blocks) for i, a in moved.items()
    }


def test_one_command_upgrade_of_a_sqlite_server_to_0_16_2_on_postgres_18_and_16(
    sqlite_letta_copy,
    start_sqlite_letta,
    pg16_cluster,
    make_database,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    capsys,
):
    """``upgrade --to 0.16.2`` of a SQLite 0.11.7 server: planned with both parts; into
    PostgreSQL 18, a migration failing after the move puts it back on SQLite at 0.11.7 (one
    undo, the target emptied), and the same upgrade killed with ``kill -9`` in its migration,
    then ``recover``: back on SQLite at 0.11.7, that target emptied; then, into PostgreSQL 16,
    the move and the migration in one run: the content of every table equal by the tests' own
    SQL, the SQLite file unchanged, the profile change printed without the password."""
    path = sqlite_letta_copy.path
    running, base_url, agents_before, messages_before, counts = _serving_on_sqlite(
        start_sqlite_letta("sqlite-upgrade-18"), path, s3_bucket, monkeypatch
    )
    monkeypatch.setenv("LETTA_OPS_SQLITE_DB", str(path))
    digests = sqlite_table_digests(path)
    target = make_database("sqlup18")  # the session's PostgreSQL 18, empty, pgvector
    monkeypatch.delenv("LETTA_OPS_MOVE_TO_URI", raising=False)
    pid = running.runtime.status()["pid"]

    # --- without the target: one sentence naming the option, nothing stopped ------------------
    assert main(["upgrade", "--to", NEW_VERSION, "--yes"]) == 2
    assert "--to-database BLOCK" in capsys.readouterr().err
    assert running.runtime.status()["pid"] == pid

    # --- the deployment's require_rehearsal cannot be met by a move: refused, nothing stopped ---
    with pytest.raises(UpgradeRefused, match="cannot be rehearsed"):
        upgrade(NEW_VERSION, require_rehearsal=True)
    assert running.runtime.status()["pid"] == pid

    # --- the plan shows the move, then the migration ------------------------------------------
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", target.letta_pg_uri())
    password = str(target.parts["password"])
    started = time.monotonic()
    assert main(["upgrade", "--to", NEW_VERSION, "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    shown = [f"plan: {time.monotonic() - started:.1f} s"]  # printed at the end (capsys)
    steps = planned["plan"]["steps"]
    assert steps.index("stop server") < steps.index(f"alembic upgrade to {NEW_VERSION}")
    assert any(s.startswith("move: copy") for s in steps)
    assert planned["move"]["dry_run"] and planned["move"]["rows"] > 50
    assert {t["name"]: t["rows"] for t in planned["move"]["tables"]} == {
        t["name"]: counts[t["name"]] for t in planned["move"]["tables"]
    }
    assert running.runtime.status()["pid"] == pid
    assert sql_scalar(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0

    # --- the migration fails after the move: back on SQLite at 0.11.7, the target empty -------
    for statement in MIGRATION_FAULT_SQL:
        sql_execute(target, statement)
    started = time.monotonic()
    assert main(["upgrade", "--to", NEW_VERSION, "--yes"]) != 0
    err = capsys.readouterr().err
    shown.append(f"failed upgrade and put back on SQLite: {time.monotonic() - started:.1f} s")
    assert "injected fault" in err and "back on SQLite at Letta 0.11.7" in err
    shown.append(err.strip().splitlines()[-1][:600])
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    assert running.runtime.status()["running"]
    assert sqlite_table_counts(path) == counts
    # Letta 0.11.7's own start on SQLite upserts its base tools (updated_at): nothing else moved.
    after_fault = sqlite_table_digests(path)
    assert {t for t in digests if digests[t] != after_fault[t]} <= {"tools"}
    digests = after_fault
    assert _public_relations(target) == 0
    sql_execute(target, "DROP EVENT TRIGGER IF EXISTS refuse_conversations")

    # --- kill -9 inside the migration (the move done), then recover: back on SQLite ------------
    killed_into = make_database("sqlup18_killed")
    _hold_for_the_kill(killed_into, SLOW_MIGRATION_SQL)
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", killed_into.letta_pg_uri())
    started = time.monotonic()
    proc = letta_ops("upgrade", "--to", NEW_VERSION, "--yes")
    server = running.runtime.server_name
    killed = kill_when_step_begins(proc, server, f"alembic upgrade to {NEW_VERSION}", 3.0)
    shown.append(f"upgrade killed in its migration: {time.monotonic() - started:.1f} s")
    at_kill = _checksum(path)
    started = time.monotonic()
    recovered = recover()
    shown.append(f"recover: {time.monotonic() - started:.1f} s, {recovered.result.done}")
    assert recovered.outcome == "recovered" and recovered.interrupted_run == killed
    assert recovered.plan.action == "back-on-sqlite"
    assert recovered.plan.interrupted_at == f"alembic upgrade to {NEW_VERSION}"
    assert recovered.result.ok and recovered.result.sqlite_sha256 == at_kill
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    assert sqlite_table_counts(path) == counts
    after_recover = sqlite_table_digests(path)
    assert {t for t in digests if digests[t] != after_recover[t]} <= {"tools"}
    digests = after_recover
    assert _public_relations(killed_into) == 0
    [record] = AuditStore.from_env().find(killed)
    assert record.outcome == "crashed" and f"alembic upgrade to {NEW_VERSION}" in record.error
    assert recover().outcome == "nothing to recover"

    # --- one command into PostgreSQL 16 (the runs above: 18): backup, move, migrate, start ----
    failed_into, target = target, make_database("sqlup16", cluster=pg16_cluster)
    password = str(target.parts["password"])
    monkeypatch.setenv("LETTA_OPS_MOVE_TO_URI", target.letta_pg_uri())
    started = time.monotonic()
    assert main(["upgrade", "--to", NEW_VERSION, "--yes"]) == 0
    out = capsys.readouterr().out
    shown.append(f"one-command upgrade to {NEW_VERSION}: {time.monotonic() - started:.1f} s")
    shown.append(out)
    assert "unset LETTA_OPS_SQLITE_DB" in out and "set LETTA_PG_URI to postgresql://" in out
    assert password not in out
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == agents_before
    after = sql_agents(target)
    assert {a.name: a.messages for a in after.values()} == messages_before
    assert sql_scalar(target, "SELECT version_num FROM alembic_version") == "27de0f58e076"
    # Every column both sides still have, row for row. 0.16.2's start upserts its base tools
    # (it has three more than 0.11.7), adds its base provider ('letta') and points the local
    # sandbox at its HOME: the tools by name, the providers as a superset, the sandbox by rows.
    sqlite_side, pg_side = _content(path, target, migrated=True)
    sqlite_tools = _names(path, "tools")
    assert len(sqlite_tools) == len(sqlite_side.pop("tools")) and sqlite_tools
    assert sqlite_tools <= {name for (name,) in _pg_rows(target, "SELECT name FROM tools")}
    pg_side.pop("tools")
    assert len(sqlite_side.pop("sandbox_configs")) == len(pg_side.pop("sandbox_configs"))
    sqlite_providers = set(sqlite_side.pop("providers"))
    pg_providers = set(pg_side.pop("providers"))
    added = pg_providers - sqlite_providers
    assert sqlite_providers <= pg_providers
    assert len(added) <= 1 and all(row.startswith("['letta', 'letta', 'base'") for row in added)
    assert sum(len(rows) for rows in sqlite_side.values()) > 50
    assert sqlite_side == pg_side
    # The SQLite file: every table as it was, counted and digested by the tests' own SQL.
    assert sqlite_table_counts(path) == counts
    assert sqlite_table_digests(path) == digests
    # The audit records both runs as upgrades, the move part of each, no password anywhere.
    capsys.readouterr()
    assert main(["history", "--operation", "upgrade", "--json"]) == 0
    history = capsys.readouterr().out
    assert password not in history
    records = [r for r in json.loads(history)["records"] if r["server"] == "sqlite-upgrade-18"]
    shown.append(f"audit outcomes, newest first: {[r['outcome'] for r in records]}")
    print("\n" + "\n".join(shown))
    runs = [r for r in records if r["backup_set"]]  # the two that ran past the safety set
    assert [r["outcome"] for r in runs] == ["succeeded", "failed"]
    assert runs[1]["rollback_outcome"] == f"succeeded: Letta {SQLITE_VERSION} restored"
    for run, moved_into in zip(runs, (target, failed_into), strict=True):
        assert (run["versions_from"], run["versions_to"]) == (SQLITE_VERSION, NEW_VERSION)
        # The audit's own redaction drops even the mask: user@host.
        audited = moved_into.redacted_uri().replace(":***@", "@")
        assert run["details"]["moved_to_postgres"]["target"] == audited
    assert runs[0]["details"]["now_on"] == "postgresql"
    assert runs[0]["counts_after"]["agents"] == len(agents_before)


def test_move_into_a_shared_owner_only_database_behind_required_tls(
    sqlite_letta_copy,
    start_sqlite_letta,
    pg_tls_cluster,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
):
    """The managed cell: PostgreSQL 18 that refuses plaintext (verify-full against the
    cluster's CA), a NOSUPERUSER NOCREATEDB role owning the database, pgvector created by the
    admin in ``extensions``, and a database Letta shares (Supabase's ``auth`` and ``storage``
    schemas with rows, the operator's ``public.app_notes``). The move builds Letta's schema
    beside those, copies every row, restarts the server there over TLS, and leaves every
    table that is not Letta's as it was (content digests, the tests' own SQL); then the moved
    server upgrades to 0.16.2 there, the other tables still as they were."""
    path = sqlite_letta_copy.path
    running, base_url, agents_before, messages_before, counts = _serving_on_sqlite(
        start_sqlite_letta("move-tls"), path, s3_bucket, monkeypatch
    )
    ca = f"sslmode=verify-full&sslrootcert={pg_tls_cluster.ca_cert}"
    role = owner_database(
        pg_tls_cluster.cluster,
        "moved_tls",
        pgvector_schema="extensions",
        admin=pg_tls_cluster.database,
        uri_query=ca,
    )
    role = LettaDatabase(uri=role.uri.get_secret_value(), pg_bin_dir=pg_tls_cluster.bin_dir)
    admin = pg_tls_cluster.database(role.database_name)
    share_database(admin, role)
    untouched = untouched_digests(admin)  # the platform's schemas: the admin reads them
    assert sql_scalar(role, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    for name, value in {
        "LETTA_OPS_SQLITE_DB": str(path),
        "LETTA_OPS_MOVE_TO_URI": role.uri.get_secret_value(),
        "LETTA_OPS_PG_BIN": str(pg_tls_cluster.bin_dir),
    }.items():
        monkeypatch.setenv(name, value)

    plan = move_to_postgres(dry_run=True)  # the operator's tables are no reason to refuse
    assert plan.dry_run and plan.rows > 50
    started = time.monotonic()
    report = move_to_postgres()
    print(f"\nmove into the shared TLS database: {time.monotonic() - started:.1f} s")
    assert report.now_on == "postgresql"
    assert report.sqlite_sha256_before == report.sqlite_sha256_after == _checksum(path)
    assert sqlite_table_counts(path) == counts
    sqlite_side, pg_side = _content(path, role)
    for rewritten_at_start in ("tools", "sandbox_configs"):  # see the PostgreSQL 16 test
        assert len(sqlite_side.pop(rewritten_at_start)) == len(pg_side.pop(rewritten_at_start))
    assert sum(len(rows) for rows in sqlite_side.values()) > 50
    assert sqlite_side == pg_side
    assert untouched_digests(admin) == untouched
    assert http_version(base_url) == SQLITE_VERSION
    assert http_agents(base_url) == agents_before
    assert {a.name: a.messages for a in sql_agents(role).values()} == messages_before
    # The restarted server's sessions (and every one the move opened) were encrypted.
    sessions, encrypted = _pg_rows(
        role,
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a "
        "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() "
        "AND a.pid <> pg_backend_pid()",
    )[0]
    assert sessions > 0 and encrypted == sessions

    # --- then the moved server upgrades there to 0.16.2 (PostgreSQL 18, the same cell) --------
    moved = sql_agents(role)
    monkeypatch.delenv("LETTA_OPS_SQLITE_DB")  # the operator's profile, switched
    monkeypatch.setenv("LETTA_PG_URI", role.uri.get_secret_value())
    started = time.monotonic()
    assert main(["upgrade", "--to", NEW_VERSION, "--yes"]) == 0
    print(
        f"upgrade to {NEW_VERSION} in the shared TLS database: {time.monotonic() - started:.1f} s"
    )
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == agents_before
    assert {i: (a.messages, a.blocks) for i, a in sql_agents(role).items()} == {
        i: (a.messages, a.blocks) for i, a in moved.items()
    }
    assert untouched_digests(admin) == untouched
