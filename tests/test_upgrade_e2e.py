"""Upgrades of real Letta servers 0.11.7 -> 0.16.2, both strategies, and the rollback."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from flows.operator_approval import ApprovalDeclined
from flows.server_lock import ServerBusy, destructive_lock
from flows.upgrade import UpgradeFailed, UpgradeRefused, upgrade
from tasks.backup_catalog import list_backup_sets
from tasks.letta_inventory import agent_inventory
from tasks.letta_postgres import alembic_revision, table_row_counts
from tasks.letta_versions import ALEMBIC_HEADS
from tasks.object_store import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, rename_agent, seed_agents

pytestmark = pytest.mark.e2e


def _old_server(start_letta, name):
    """A 0.11.7 server with 16 agents; one renamed to 'AI/ML Expert' through PATCH."""
    running = start_letta(OLD_VERSION, name)
    with running.client() as client:
        agents = seed_agents(client, 16, prefix=name)
        rename_agent(client, agents[3]["id"], "AI/ML Expert")
    return running


def _decline_when_paused(name_prefix: str, timeout: float = 300) -> Future:
    """In the background: wait for a paused run named ``name_prefix...``, answer "no"."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    def decline() -> str:
        paused = FlowRunFilter(state=FlowRunFilterState(type={"any_": [StateType.PAUSED]}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                runs = [
                    r
                    for r in client.read_flow_runs(flow_run_filter=paused)
                    if r.name.startswith(name_prefix)
                ]
            if runs:
                resume_flow_run(runs[0].id, run_input={"approve": False, "operator": "e2e"})
                return "declined"
            time.sleep(1)
        return "never paused"

    return ThreadPoolExecutor(max_workers=1).submit(decline)


@pytest.fixture
def upgrade_env(s3_env, s3_bucket, monkeypatch, prefect_harness):
    client, bucket, _ = s3_bucket

    def point_at(running):
        for name, value in operator_env(running, f"s3://{bucket}/backups").items():
            monkeypatch.setenv(name, value)
        return S3ObjectStore(client, bucket, "backups")

    return point_at


def test_migrate_keeps_every_agent_and_message(start_letta, upgrade_env):
    running = _old_server(start_letta, "upg-migrate")
    store = upgrade_env(running)
    before = agent_inventory(running.database)
    assert len(before) == 16 and sum(a["messages"] for a in before.values()) > 0

    plan = upgrade(NEW_VERSION, dry_run=True)
    assert plan["outcome"] == "planned" and plan["plan"]["from_version"] == OLD_VERSION
    assert any(c["old"] == "AI/ML Expert" for c in plan["plan"]["renames"].values())
    assert list_backup_sets(store) == []  # a dry run changes nothing
    with running.client() as client:
        assert client.health()["version"] == OLD_VERSION

    # With approval on, the run pauses before its first destructive step; a "no" from the
    # operator (through the Prefect API, as the UI sends it) ends it with nothing changed.
    declined = _decline_when_paused("upgrade-")
    with pytest.raises(ApprovalDeclined, match="declined"):
        upgrade(NEW_VERSION, approval=True)
    assert declined.result(timeout=5) == "declined"
    assert list_backup_sets(store) == []
    with running.client() as client:
        assert client.health()["version"] == OLD_VERSION

    report = upgrade(NEW_VERSION, strategy="migrate")
    assert report["outcome"] == "succeeded"
    print(f"\nmigrate downtime: {report['downtime_seconds']} s")
    with running.client() as client:
        assert client.health()["version"] == NEW_VERSION
        live = {a["id"]: a["name"] for a in client.list_agents()}
    assert live == {a: v["name"] for a, v in before.items()}
    after = agent_inventory(running.database)
    for agent_id, old in before.items():
        assert after[agent_id]["messages"] >= old["messages"]
        assert after[agent_id]["blocks"] >= old["blocks"]
    assert alembic_revision(running.database) == ALEMBIC_HEADS[NEW_VERSION]
    [pre] = [s for s in list_backup_sets(store) if s.purpose == "pre-upgrade"]
    assert pre.pinned and pre.verified

    with pytest.raises(UpgradeRefused, match="rollback"):
        upgrade(OLD_VERSION)


def test_rebuild_brings_16_of_16_across(start_letta, upgrade_env):
    running = _old_server(start_letta, "upg-rebuild")
    upgrade_env(running)
    before = agent_inventory(running.database)

    report = upgrade(NEW_VERSION, strategy="rebuild")
    assert report["outcome"] == "succeeded"
    print(f"\nrebuild downtime: {report['downtime_seconds']} s")
    renames = report["plan"]["renames"]
    assert [c["old"] for c in renames.values()] == ["AI/ML Expert"]
    assert renames[next(iter(renames))]["new"] == "AI-ML Expert"
    expected = sorted(renames.get(a, {}).get("new", v["name"]) for a, v in before.items())
    with running.client() as client:
        assert client.health()["version"] == NEW_VERSION
        names = sorted(a["name"] for a in client.list_agents())
    assert names == expected and len(names) == 16
    assert "note" in report["not_carried"]
    rows = report["verification"]
    assert len(rows) == 16 and all(r["messages_after"] is not None for r in rows)


def test_failed_target_start_rolls_back_and_lock_refuses(start_letta, upgrade_env):
    running = _old_server(start_letta, "upg-fault")
    upgrade_env(running)
    before_agents = agent_inventory(running.database)
    before_counts = table_row_counts(running.database)

    # Fault: the rebuild dropped and recreated the database, then the target gets 3 s to
    # become healthy (it needs ~40 s).
    state = upgrade(NEW_VERSION, strategy="rebuild", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed) as failure:
        state.result()
    assert "rollback restored" in str(failure.value)
    with running.client() as client:
        assert client.health()["version"] == OLD_VERSION
        live = {a["id"]: a["name"] for a in client.list_agents()}
    assert live == {a: v["name"] for a, v in before_agents.items()}
    assert "AI/ML Expert" in live.values()
    assert table_row_counts(running.database) == before_counts
    assert alembic_revision(running.database) == ALEMBIC_HEADS[OLD_VERSION]

    # A second destructive flow on the same server is refused while one holds the lock.
    from prefect import flow

    @flow
    def holder():
        with destructive_lock(running.runtime.server_name, 0):
            with pytest.raises(ServerBusy):
                upgrade(NEW_VERSION, strategy="migrate")

    holder()
    with running.client() as client:
        assert client.health()["version"] == OLD_VERSION
