"""Real Letta servers through the process runtime: 0.11.7 -> 0.16.2 on the same database."""

from __future__ import annotations

import pytest

from letta_ops.tasks.letta.api import LettaAPIError, offline_agent_body
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.postgres.letta_schema import alembic_revision
from letta_ops.tasks.runtimes.install import installed_runtime
from letta_ops.tasks.runtimes.process import running_server
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, rename_agent, seed_agents
from tests.fixtures.oracle import sql_agents, sql_table_counts

pytestmark = pytest.mark.e2e


def test_in_place_migration_keeps_every_agent(letta_runtime_factory, make_database):
    db = make_database("inplace")
    runtime = letta_runtime_factory("inplace")

    runtime.migrate(OLD_VERSION, db)
    assert alembic_revision(db) == ALEMBIC_HEADS[OLD_VERSION]
    old = runtime.start(OLD_VERSION, db)
    assert running_server(runtime.resolved_state_dir()).pid == old.pid

    from tests.fixtures.letta import RunningLetta

    with RunningLetta(runtime, db, OLD_VERSION).client() as client:
        assert client.health()["version"] == OLD_VERSION
        agents = seed_agents(client, 4)
        # The old server refuses '/' on create but not on PATCH: real databases hold such names.
        with pytest.raises(LettaAPIError) as refused:
            client.create_agent(offline_agent_body("AI/ML Expert"))
        assert refused.value.status in (400, 422)
        rename_agent(client, agents[0]["id"], "AI/ML Expert")
        before = {a["id"]: a["name"] for a in client.list_agents()}
    assert "AI/ML Expert" in before.values()
    assert len(before) == 4
    tables_before = sql_table_counts(db)
    agents_before = sql_agents(db)
    assert tables_before["messages"] == sum(a.messages for a in agents_before.values()) > 0

    stopped = runtime.stop()
    assert stopped is not None and stopped.pid == old.pid
    assert running_server(runtime.resolved_state_dir()) is None

    runtime.migrate(NEW_VERSION, db)
    assert alembic_revision(db) == ALEMBIC_HEADS[NEW_VERSION]
    runtime.start(NEW_VERSION, db)
    with RunningLetta(runtime, db, NEW_VERSION).client() as client:
        assert client.health()["version"] == NEW_VERSION
        after = {a["id"]: a["name"] for a in client.list_agents()}
    assert after == before
    # alembic upgrade and the new server's start change no agent, message or block.
    assert sql_agents(db) == agents_before
    assert sql_table_counts(db)["messages"] == tables_before["messages"]
    runtime.stop()

    cached = installed_runtime(NEW_VERSION)
    assert cached is not None and cached.has_migrations


def test_a_server_with_a_password_is_started_secured(make_database, monkeypatch, tmp_path):
    """LETTA_API_KEY set: ``letta-ops runtime start`` runs the server --secure with the
    password in its environment only, and it refuses a request without credentials."""
    import httpx
    import psutil

    from letta_ops.cli.main import main
    from letta_ops.tasks.postgres.embedded import free_loopback_port

    db = make_database("secured")
    password = "pw-" + tmp_path.name[-12:]
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    for name, value in {
        "LETTA_BASE_URL": base_url,
        "LETTA_PG_URI": db.letta_pg_uri(),
        "LETTA_API_KEY": password,
        "LETTA_OPS_STATE_DIR": str(tmp_path),
        "LETTA_OPS_SERVER_NAME": "secured",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["runtime", "start", "--version", NEW_VERSION, "--migrate"]) == 0
    try:
        anonymous = httpx.get(f"{base_url}/v1/agents/", timeout=30)
        assert anonymous.status_code in (401, 403)
        authorized = httpx.get(
            f"{base_url}/v1/agents/", headers={"Authorization": f"Bearer {password}"}, timeout=30
        )
        assert authorized.status_code == 200
        record = running_server(tmp_path / "secured")
        assert record.secured
        argv = " ".join(psutil.Process(record.pid).cmdline())
        assert "--secure" in argv and password not in argv
    finally:
        main(["runtime", "stop"])
