"""Per-agent fingerprints on a real PostgreSQL 18 (the session cluster) with a small hand-made
Letta-like schema: which writes change which agent's fingerprint, and which change nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres.agent_fingerprints import agent_fingerprints
from letta_ops.tasks.postgres.letta_schema import connect
from tests.fixtures.postgres import owner_database
from tests.fixtures.tls_postgres import tls_shared_owner_database

SCHEMA = """
CREATE TABLE agents (id text PRIMARY KEY, name text NOT NULL, system text);
CREATE TABLE messages (id text PRIMARY KEY, agent_id text REFERENCES agents(id), text text);
CREATE TABLE block (id text, label text, value text, PRIMARY KEY (id), UNIQUE (id, label));
CREATE TABLE blocks_agents (
    agent_id text REFERENCES agents(id), block_id text, block_label text,
    PRIMARY KEY (agent_id, block_id, block_label),
    FOREIGN KEY (block_id, block_label) REFERENCES block(id, label));
CREATE TABLE tools (id text PRIMARY KEY, source_code text);
CREATE TABLE tools_agents (
    agent_id text REFERENCES agents(id), tool_id text REFERENCES tools(id),
    PRIMARY KEY (agent_id, tool_id));
INSERT INTO agents VALUES ('agent-a', 'A', 's'), ('agent-b', 'B', 's');
INSERT INTO messages SELECT 'm-a-' || i, 'agent-a', 'hello ' || i FROM generate_series(1, 5) i;
INSERT INTO messages SELECT 'm-b-' || i, 'agent-b', 'hello ' || i FROM generate_series(1, 5) i;
INSERT INTO block VALUES ('block-a', 'persona', 'p'), ('block-b', 'persona', 'p');
INSERT INTO blocks_agents VALUES ('agent-a', 'block-a', 'persona'),
                                 ('agent-b', 'block-b', 'persona');
INSERT INTO tools VALUES ('tool-1', 'def f(): pass');
INSERT INTO tools_agents VALUES ('agent-b', 'tool-1');
CREATE SCHEMA other;
CREATE TABLE other.messages (id text PRIMARY KEY, agent_id text, text text);
"""


@pytest.fixture
def letta_like(make_database):
    db = make_database("fingerprints", with_pgvector=False)
    with connect(db, autocommit=True) as conn:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
    return db


def _write(db, statement: str) -> None:
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text(statement))


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after)
    return {agent for agent in before if before[agent] != after[agent]}


def test_nothing_changed_gives_equal_fingerprints(letta_like):
    first = agent_fingerprints(letta_like)
    assert set(first.by_agent) == {"agent-a", "agent-b"}
    assert all(len(v) == 64 for v in first.by_agent.values())
    assert first.tables == ["blocks_agents", "messages", "tools_agents"]
    assert first.links == ["blocks_agents->block", "tools_agents->tools"]
    assert agent_fingerprints(letta_like).by_agent == first.by_agent
    assert first.by_agent["agent-a"] != first.by_agent["agent-b"]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO messages VALUES ('m-a-new', 'agent-a', 'one more')",
        "UPDATE messages SET text = 'edited' WHERE id = 'm-a-3'",
        "UPDATE messages SET text = text WHERE id = 'm-a-3'",  # a new row version all the same
        "DELETE FROM messages WHERE id = 'm-a-2'",
        "UPDATE block SET value = 'edited persona' WHERE id = 'block-a'",
        "UPDATE agents SET system = 'new system prompt' WHERE id = 'agent-a'",
        "DELETE FROM blocks_agents WHERE agent_id = 'agent-a'",
    ],
    ids=["insert", "update", "same-value update", "delete", "linked block", "agent row", "unlink"],
)
def test_a_write_changes_only_that_agents_fingerprint(letta_like, statement):
    before = agent_fingerprints(letta_like).by_agent
    _write(letta_like, statement)
    assert _changed(before, agent_fingerprints(letta_like).by_agent) == {"agent-a"}


def test_a_tool_changed_changes_the_agents_linked_to_it(letta_like):
    before = agent_fingerprints(letta_like).by_agent
    _write(letta_like, "UPDATE tools SET source_code = 'def f(): return 1' WHERE id = 'tool-1'")
    assert _changed(before, agent_fingerprints(letta_like).by_agent) == {"agent-b"}


def test_a_table_in_another_schema_is_ignored(letta_like):
    before = agent_fingerprints(letta_like).by_agent
    _write(letta_like, "INSERT INTO other.messages VALUES ('x', 'agent-a', 'not Letta''s')")
    assert agent_fingerprints(letta_like).by_agent == before


def test_letta_in_a_schema_of_its_own(make_database):
    """The Docker image's layout: Letta's tables in a schema named after the database, the
    same names in public ignored."""
    db = make_database("fpschema", with_pgvector=False)
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE SCHEMA letta"))
        for statement in SCHEMA.split(";"):
            if statement.strip() and "other" not in statement:
                conn.execute(
                    sa.text(
                        statement.replace("CREATE TABLE ", "CREATE TABLE letta.")
                        .replace("INSERT INTO ", "INSERT INTO letta.")
                        .replace("REFERENCES ", "REFERENCES letta.")
                    )
                )
        conn.execute(sa.text("CREATE TABLE public.messages (id text, agent_id text)"))
    scoped = db.model_copy(update={"db_schema": "letta"})
    before = agent_fingerprints(scoped)
    assert set(before.by_agent) == {"agent-a", "agent-b"}
    assert before.links == ["blocks_agents->block", "tools_agents->tools"]
    _write(db, "INSERT INTO public.messages VALUES ('x', 'agent-a')")
    assert agent_fingerprints(scoped).by_agent == before.by_agent
    _write(db, "INSERT INTO letta.messages VALUES ('x', 'agent-b', 'new')")
    assert _changed(before.by_agent, agent_fingerprints(scoped).by_agent) == {"agent-b"}


@pytest.fixture(params=["pg16-owner", "pg18-owner-tls-shared"])
def cell(request) -> tuple[LettaDatabase, LettaDatabase | None]:
    """The fingerprints' database as operators give it: PostgreSQL 16 to an owner-only role;
    PostgreSQL 18 refusing plaintext (verify-full against the cluster's CA), an owner-only
    role, a database Letta shares (Supabase's ``auth`` with an ``agent_id`` column, the
    operator's table in ``public``). Returns the role's database and, where shared, the
    admin's (who writes the other tables)."""
    if request.param == "pg16-owner":
        return owner_database(request.getfixturevalue("pg16_cluster"), "fp16", False), None
    tls = request.getfixturevalue("pg_tls_cluster")
    return tls_shared_owner_database(tls, "fptls", with_pgvector=False)


def test_each_cell_sees_the_writes_the_tests_own_sql_makes(cell):
    """Which agent a write touches is read by the tests' own SQL, not by the code under test;
    exactly that agent's fingerprint changes, and writes to what is not Letta's change none."""
    role, admin = cell
    with connect(role, autocommit=True) as conn:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
        touched = conn.execute(sa.text("SELECT agent_id FROM messages WHERE id = 'm-b-3'")).scalar()
    before = agent_fingerprints(role).by_agent
    assert set(before) == {"agent-a", "agent-b"}
    _write(role, "UPDATE messages SET text = 'edited' WHERE id = 'm-b-3'")
    after = agent_fingerprints(role).by_agent
    assert _changed(before, after) == {touched}
    if admin is not None:  # the shared cell: the platform's and the operator's rows
        _write(admin, "INSERT INTO auth.sessions VALUES ('agent-b', 't2')")
        _write(role, "INSERT INTO public.app_notes VALUES (1, 'agent-a: mine')")
        assert agent_fingerprints(role).by_agent == after
