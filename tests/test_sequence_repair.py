"""Sequence discovery and repair on real PostgreSQL, plain schemas and real Letta schemas."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.blocks.process_runtime import LettaProcessRuntime
from letta_ops.tasks.postgres.embedded import free_loopback_port
from letta_ops.tasks.postgres.letta_schema import connect, quote_ident
from letta_ops.tasks.postgres.sequence_repair import (
    SequenceColumn,
    find_sequence_columns,
    repair_sequences,
    sequence_health,
)

# A schema name that needs quoting, as well as the default one.
SCHEMAS = ["public", "Letta Ops"]


#: The tests' tables beside Letta's messages: named, so their sequences are repaired too.
EXTRA_TABLES = ["serial_things", "identity_things", "empty_things", "used_things"]


def _in_schema(db: LettaDatabase, schema: str) -> LettaDatabase:
    return LettaDatabase(
        uri=db.uri, db_schema=None if schema == "public" else schema, extra_tables=EXTRA_TABLES
    )


def _seq(schema: str, name: str) -> str:
    """The qualified name as PostgreSQL's format('%I.%I') writes it."""
    return f"{quote_ident(schema) if schema != 'public' else schema}.{name}"


def _plain_schema(make_database, schema: str) -> LettaDatabase:
    """Three sequence columns (serial, identity, Letta-style free-standing default), all behind."""
    db = _in_schema(make_database("seqplain", with_pgvector=False), schema)
    s = quote_ident(schema)
    with connect(db, autocommit=True) as conn:
        if schema != "public":
            conn.execute(sa.text(f"CREATE SCHEMA {s}"))
        for statement in [
            f"CREATE TABLE {s}.serial_things (id serial PRIMARY KEY, note text)",
            f"CREATE TABLE {s}.identity_things "
            "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)",
            # What Letta's migration e991d2e3b428 builds: not OWNED BY, found only via the default.
            f"CREATE SEQUENCE {s}.message_seq_id START 1",
            f"CREATE TABLE {s}.messages (id text PRIMARY KEY, sequence_id bigint NOT NULL "
            "UNIQUE DEFAULT nextval('message_seq_id'::regclass))",
            f"INSERT INTO {s}.serial_things (id, note) VALUES (10, 'a'), (20, 'b'), (30, 'c')",
            f"INSERT INTO {s}.identity_things OVERRIDING SYSTEM VALUE VALUES (7, 'a'), (42, 'b')",
            f"INSERT INTO {s}.messages (id, sequence_id) VALUES ('m1', 5), ('m2', 99)",
        ]:
            conn.execute(sa.text(statement))
    return db


def _sequence_values(db: LettaDatabase, schema: str) -> dict[str, tuple[int, bool]]:
    with connect(db) as conn:
        names = (
            conn.execute(
                sa.text("SELECT sequencename FROM pg_sequences WHERE schemaname = :s"),
                {"s": schema},
            )
            .scalars()
            .all()
        )
        return {
            n: tuple(
                conn.execute(
                    sa.text(
                        f"SELECT last_value, is_called FROM {quote_ident(schema)}.{quote_ident(n)}"
                    )
                ).one()
            )
            for n in names
        }


def _insert_defaults(db: LettaDatabase, schema: str, suffix: str) -> dict[str, int]:
    s = quote_ident(schema)
    with connect(db) as conn:
        ids = {
            "serial_things": conn.execute(
                sa.text(f"INSERT INTO {s}.serial_things (note) VALUES ('n') RETURNING id")
            ).scalar(),
            "identity_things": conn.execute(
                sa.text(f"INSERT INTO {s}.identity_things (note) VALUES ('n') RETURNING id")
            ).scalar(),
            "messages": conn.execute(
                sa.text(f"INSERT INTO {s}.messages (id) VALUES (:i) RETURNING sequence_id"),
                {"i": f"new-{suffix}"},
            ).scalar(),
        }
        conn.commit()
    return ids


def _column_default(db: LettaDatabase, schema: str) -> str | None:
    with connect(db) as conn:
        return conn.execute(
            sa.text(
                "SELECT column_default FROM information_schema.columns WHERE table_schema = :s "
                "AND table_name = 'messages' AND column_name = 'sequence_id'"
            ),
            {"s": schema},
        ).scalar()


@pytest.mark.parametrize("schema", SCHEMAS)
def test_finds_and_repairs_every_kind_of_sequence(make_database, schema):
    db = _plain_schema(make_database, schema)

    with connect(db) as conn:
        found = find_sequence_columns(conn, schema)
    assert found == [
        SequenceColumn(
            schema, "identity_things", "id", _seq(schema, "identity_things_id_seq"), "identity"
        ),
        SequenceColumn(
            schema, "messages", "sequence_id", _seq(schema, "message_seq_id"), "default"
        ),
        SequenceColumn(
            schema, "serial_things", "id", _seq(schema, "serial_things_id_seq"), "owned"
        ),
    ]

    # The broken state: every default-driven insert collides (or would, soon).
    health = {(h["table"], h["column"]): h for h in sequence_health(db)}
    assert not any(h["ok"] for h in health.values())
    assert "would hand out 1" in health[("serial_things", "id")]["problem"]

    before = _sequence_values(db, schema)
    dry = repair_sequences(db, dry_run=True)
    assert _sequence_values(db, schema) == before, "a dry run must not move a sequence"
    assert dry.dry_run

    report = repair_sequences(db)
    assert report.changes == dry.changes
    assert report.checked == dry.checked
    assert sorted(report.changes, key=lambda c: c["table"]) == [
        {
            "action": "setval",
            "sequence": _seq(schema, "identity_things_id_seq"),
            "table": "identity_things",
            "column": "id",
            "from": 1,
            "to": 43,
        },
        {
            "action": "setval",
            "sequence": _seq(schema, "message_seq_id"),
            "table": "messages",
            "column": "sequence_id",
            "from": 1,
            "to": 100,
        },
        {
            "action": "setval",
            "sequence": _seq(schema, "serial_things_id_seq"),
            "table": "serial_things",
            "column": "id",
            "from": 1,
            "to": 31,
        },
    ]
    assert report.to_dict()["changes"] == report.changes

    assert _insert_defaults(db, schema, "a") == {
        "serial_things": 31,
        "identity_things": 43,
        "messages": 100,
    }

    again = repair_sequences(db)
    assert again.changes == []
    assert all(c["ok"] for c in again.checked)
    assert all(h["ok"] and h["problem"] is None for h in sequence_health(db))


def test_empty_tables_and_healthy_sequences_are_left_alone(make_database):
    db = _in_schema(make_database("seqempty", with_pgvector=False), "public")
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE empty_things (id serial PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE used_things (id serial PRIMARY KEY, v int)"))
        conn.execute(sa.text("INSERT INTO used_things (v) VALUES (1), (2)"))
        # The operator's own table (not Letta's, not named): its lagging sequence stays.
        conn.execute(sa.text("CREATE TABLE app_notes (id serial PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO app_notes VALUES (5)"))
    report = repair_sequences(db)
    assert report.changes == []
    assert {c["table"]: (c["max"], c["next_value"], c["ok"]) for c in report.checked} == {
        "empty_things": (None, 1, True),
        "used_things": (2, 3, True),
    }
    with connect(db) as conn:
        assert conn.execute(sa.text("SELECT last_value FROM app_notes_id_seq")).scalar() == 1


@pytest.mark.parametrize("schema", SCHEMAS)
def test_restores_dropped_messages_default_and_sequence(make_database, schema):
    db = _plain_schema(make_database, schema)
    repair_sequences(db)
    s = quote_ident(schema)
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text(f"ALTER TABLE {s}.messages ALTER COLUMN sequence_id DROP DEFAULT"))
        conn.execute(sa.text(f"DROP SEQUENCE {s}.message_seq_id"))
        conn.execute(sa.text(f"INSERT INTO {s}.messages (id, sequence_id) VALUES ('m3', 250)"))

    # Without the default every message insert fails: the column is NOT NULL, as in Letta.
    with pytest.raises(sa.exc.DBAPIError, match="null value"):
        _insert_defaults(db, schema, "broken")

    with connect(db) as conn:
        assert "messages" not in {c.table for c in find_sequence_columns(conn, schema)}
    health = {(h["table"], h["column"]): h for h in sequence_health(db)}
    problem = health[("messages", "sequence_id")]
    assert not problem["ok"]
    assert "has no default" in problem["problem"]
    assert f"sequence {_seq(schema, 'message_seq_id')} is missing" in problem["problem"]
    assert health[("serial_things", "id")]["ok"]

    dry = repair_sequences(db, dry_run=True)
    assert _column_default(db, schema) is None, "a dry run must not set the default"
    with connect(db) as conn:
        seq = _seq(schema, "message_seq_id")
        assert conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": seq}).scalar() is None

    report = repair_sequences(db)
    assert report.changes == dry.changes
    assert report.changes == [
        {"action": "create-sequence", "sequence": _seq(schema, "message_seq_id")},
        {
            "action": "set-default",
            "table": "messages",
            "column": "sequence_id",
            "sequence": _seq(schema, "message_seq_id"),
        },
        {
            "action": "setval",
            "sequence": _seq(schema, "message_seq_id"),
            "table": "messages",
            "column": "sequence_id",
            "from": 1,
            "to": 251,
        },
    ]
    assert "nextval(" in _column_default(db, schema)
    with connect(db) as conn:
        found = find_sequence_columns(conn, schema)
    assert (
        SequenceColumn(schema, "messages", "sequence_id", _seq(schema, "message_seq_id"), "default")
        in found
    )

    assert _insert_defaults(db, schema, "fixed")["messages"] == 251
    assert all(h["ok"] for h in sequence_health(db))
    assert repair_sequences(db).changes == []


def test_dropped_default_with_surviving_sequence_only_sets_default(make_database):
    db = _plain_schema(make_database, "public")
    repair_sequences(db)
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN sequence_id DROP DEFAULT"))
    health = {(h["table"], h["column"]): h for h in sequence_health(db)}
    assert "has no default" in health[("messages", "sequence_id")]["problem"]
    assert "missing" not in health[("messages", "sequence_id")]["problem"]
    report = repair_sequences(db)
    assert report.changes == [
        {
            "action": "set-default",
            "table": "messages",
            "column": "sequence_id",
            "sequence": "public.message_seq_id",
        }
    ]
    assert _insert_defaults(db, "public", "b")["messages"] == 100


# --------------------------------------------------------------------------------------------
# Real Letta schemas (alembic migrations of the pinned versions)
# --------------------------------------------------------------------------------------------

#: What ``alembic upgrade head`` builds, as seen by find_sequence_columns.
LETTA_SEQUENCES = {
    "0.16.2": [
        SequenceColumn("public", "messages", "sequence_id", "public.message_seq_id", "default"),
    ],
    "0.11.7": [
        SequenceColumn("public", "job_messages", "id", "public.job_messages_id_seq", "owned"),
        SequenceColumn("public", "messages", "sequence_id", "public.message_seq_id", "default"),
    ],
}


def _insert_message(db: LettaDatabase, sequence_id: int | None) -> int:
    """A minimal messages row; foreign keys are skipped (replica role) since there is no agent."""
    columns = "id, agent_id, role, tool_calls, organization_id"
    values = ":id, 'agent-x', 'user', '[]', 'org-x'"
    if sequence_id is not None:
        columns += ", sequence_id"
        values += ", :seq"
    with connect(db) as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        value = conn.execute(
            sa.text(f"INSERT INTO messages ({columns}) VALUES ({values}) RETURNING sequence_id"),
            {"id": f"message-{uuid.uuid4().hex}", "seq": sequence_id},
        ).scalar()
        conn.commit()
    return int(value)


@pytest.mark.e2e
@pytest.mark.parametrize("version", ["0.16.2", "0.11.7"])
def test_real_letta_schema(make_database, tmp_path, version):
    db = make_database("seqletta")
    LettaProcessRuntime(state_dir=tmp_path, port=free_loopback_port()).migrate(version, db)

    with connect(db) as conn:
        assert find_sequence_columns(conn, "public") == LETTA_SEQUENCES[version]
        # The trap: ownership-based discovery does not see Letta's message sequence.
        assert (
            conn.execute(
                sa.text("SELECT pg_get_serial_sequence('messages', 'sequence_id')")
            ).scalar()
            is None
        )
    letta_default = _column_default(db, "public")
    assert letta_default == "nextval('message_seq_id'::regclass)"

    # A freshly migrated schema is healthy.
    assert repair_sequences(db).changes == []
    assert all(h["ok"] for h in sequence_health(db))

    # A message written with an explicit id puts the sequence behind; repair moves it past.
    assert _insert_message(db, None) == 1
    _insert_message(db, 500)
    assert repair_sequences(db).changes == [
        {
            "action": "setval",
            "sequence": "public.message_seq_id",
            "table": "messages",
            "column": "sequence_id",
            "from": 2,
            "to": 501,
        }
    ]
    assert _insert_message(db, None) == 501

    # Lose the default (and the sequence): repair rebuilds what Letta's migration made.
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN sequence_id DROP DEFAULT"))
        conn.execute(sa.text("DROP SEQUENCE message_seq_id"))
    with pytest.raises(sa.exc.DBAPIError, match="null value"):
        _insert_message(db, None)
    assert not {h["column"]: h for h in sequence_health(db)}["sequence_id"]["ok"]

    report = repair_sequences(db)
    assert [c["action"] for c in report.changes] == ["create-sequence", "set-default", "setval"]
    assert report.changes[-1]["to"] == 502
    assert _column_default(db, "public") == letta_default
    with connect(db) as conn:
        assert find_sequence_columns(conn, "public") == LETTA_SEQUENCES[version]
    assert _insert_message(db, None) == 502
    assert repair_sequences(db).changes == []
    assert all(h["ok"] for h in sequence_health(db))
