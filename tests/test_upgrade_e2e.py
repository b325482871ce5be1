"""Upgrades of real Letta servers 0.11.7 -> 0.16.2, both strategies, and the rollback."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from letta_ops.flows.steps.upgrade_steps import UpgradeFailed, UpgradeRefused
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.letta.versions import ALEMBIC_HEADS
from letta_ops.tasks.postgres.letta_schema import alembic_revision
from letta_ops.tasks.runs.approval import ApprovalDeclined
from letta_ops.tasks.runs.context import artifact_key
from letta_ops.tasks.runs.lock import ServerBusy, destructive_lock
from letta_ops.tasks.sets.catalog import list_backup_sets
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, rename_agent, seed_agents
from tests.fixtures.oracle import (
    http_agents,
    http_version,
    sql_agent_contents,
    sql_agents,
    sql_table_counts,
)
from tests.fixtures.prefect import flow_run_artifacts

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
    base_url = running.server.base_url
    before = sql_agents(running.database)
    assert len(before) == 16 and all(a.messages > 0 and a.blocks == 2 for a in before.values())
    assert http_agents(base_url) == {a: v.name for a, v in before.items()}
    tables_before = sql_table_counts(running.database)

    plan = upgrade(NEW_VERSION, dry_run=True)
    assert plan.outcome == "planned" and plan.plan.from_version == OLD_VERSION
    assert any(c.old == "AI/ML Expert" for c in plan.plan.renames.values())
    assert list_backup_sets(store) == []  # a dry run changes nothing
    assert http_version(base_url) == OLD_VERSION
    assert sql_table_counts(running.database) == tables_before

    # With approval on, the run pauses before its first destructive step; a "no" from the
    # operator (through the Prefect API, as the UI sends it) ends it with nothing changed.
    declined = _decline_when_paused("upgrade-")
    with pytest.raises(ApprovalDeclined, match="declined"):
        upgrade(NEW_VERSION, approval=True)
    assert declined.result(timeout=5) == "declined"
    assert list_backup_sets(store) == []
    assert http_version(base_url) == OLD_VERSION
    assert sql_table_counts(running.database) == tables_before

    started = time.monotonic()
    report = upgrade(NEW_VERSION, strategy="migrate")
    wall = time.monotonic() - started
    assert report.outcome == "succeeded"
    print(f"\nmigrate downtime: {report.downtime_seconds} s")
    print("phases: " + ", ".join(f"{p.name} {p.seconds:.1f} s" for p in report.phases))
    # Where the time went (#32): each step once, in order, one after the other, inside the
    # run's wall time; the steps after the stop are the downtime the report states.
    names = [p.name for p in report.phases]
    assert names == [
        "pre-flight",
        "lock",
        "backup",
        "counts before",
        "stop server",
        f"alembic upgrade to {NEW_VERSION}",
        "repair sequences",
        f"start {NEW_VERSION}",
        "verify",
    ]
    for before_, after_ in zip(report.phases, report.phases[1:], strict=False):
        gap = (after_.started_at - before_.started_at).total_seconds() - before_.seconds
        assert abs(gap) < 0.1, (before_.name, after_.name, gap)
    assert sum(p.seconds for p in report.phases) <= wall
    down = sum(p.seconds for p in report.phases[names.index("stop server") + 1 :])
    assert report.downtime_seconds - 0.1 <= down <= report.downtime_seconds + 2.0
    assert report.phases[names.index("backup")].seconds > 1.0  # a real, verified backup
    assert http_version(base_url) == NEW_VERSION
    assert http_agents(base_url) == {a: v.name for a, v in before.items()}
    # The migration keeps rows as they are: every agent, message and block, exactly.
    assert sql_agents(running.database) == before
    assert alembic_revision(running.database) == ALEMBIC_HEADS[NEW_VERSION]
    [pre] = [s for s in list_backup_sets(store) if s.purpose == "pre-upgrade"]
    assert pre.pinned and pre.verified

    with pytest.raises(UpgradeRefused, match="rollback"):
        upgrade(OLD_VERSION)


def test_rebuild_brings_16_of_16_across(start_letta, upgrade_env):
    running = _old_server(start_letta, "upg-rebuild")
    upgrade_env(running)
    before = sql_agents(running.database)
    assert http_agents(running.server.base_url) == {a: v.name for a, v in before.items()}
    contents_before = sql_agent_contents(running.database)

    report = upgrade(NEW_VERSION, strategy="rebuild")
    assert report.outcome == "succeeded"
    print(f"\nrebuild downtime: {report.downtime_seconds} s")
    renames = report.plan.renames
    assert [c.old for c in renames.values()] == ["AI/ML Expert"]
    assert renames[next(iter(renames))].new == "AI-ML Expert"
    expected = sorted(renames[a].new if a in renames else v.name for a, v in before.items())
    assert http_version(running.server.base_url) == NEW_VERSION
    names = sorted(http_agents(running.server.base_url).values())
    assert names == expected and len(names) == 16
    assert sorted(a.name for a in sql_agents(running.database).values()) == expected
    # Per agent, by the tests' own SQL: every message (role and text) and every memory block
    # came across, not only the names (the product's own verification is not the oracle).
    new_name = {v.name: renames[a].new for a, v in before.items() if a in renames}
    carried = {new_name.get(n, n): c.carried() for n, c in contents_before.items()}
    after = {n: c.carried() for n, c in sql_agent_contents(running.database).items()}
    assert after == carried
    assert report.not_carried.note
    rows = report.verification
    assert len(rows) == 16 and all(r.messages_after is not None for r in rows)


def test_failed_target_start_rolls_back_and_lock_refuses(
    start_letta, upgrade_env, s3_bucket, monkeypatch
):
    running = _old_server(start_letta, "upg-fault")
    store = upgrade_env(running)
    base_url = running.server.base_url
    before_agents = sql_agents(running.database)
    before_counts = sql_table_counts(running.database)
    before_pid = running.runtime.status()["pid"]

    # A backup that fails blocks the upgrade: the store's bucket does not exist, so the
    # pre-upgrade backup cannot write; nothing is stopped, migrated or stored.
    s3, bucket, _ = s3_bucket
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}-missing/backups")
    state = upgrade(NEW_VERSION, strategy="migrate", return_state=True)
    assert state.is_failed()
    with pytest.raises(ClientError, match=r"\(NoSuchBucket\) when calling the PutObject"):
        state.result()
    assert http_version(base_url) == OLD_VERSION
    assert running.runtime.status()["pid"] == before_pid
    assert alembic_revision(running.database) == ALEMBIC_HEADS[OLD_VERSION]
    assert sql_table_counts(running.database) == before_counts
    assert f"{bucket}-missing" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert list_backup_sets(store) == []
    upgrade_env(running)  # the real store again

    # Fault: the rebuild dropped and recreated the database, then the target gets 3 s to
    # become healthy (it needs ~40 s).
    state = upgrade(NEW_VERSION, strategy="rebuild", start_timeout_seconds=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(UpgradeFailed) as failure:
        state.result()
    assert "rollback restored" in str(failure.value)
    # The failed run's report (its artifact) says where the time went, the undo included.
    [published] = [
        a.data
        for a in flow_run_artifacts([state.state_details.flow_run_id])
        if a.type == "markdown" and a.key == artifact_key("upgrade", running.runtime.server_name)
    ]
    table = [row for row in published.split("## Phases")[1].splitlines() if row.startswith("|")]
    phase_names = [row.split("|")[1].strip() for row in table[2:]]  # after header, separator
    assert phase_names[-2:] == [
        f"start {NEW_VERSION}",
        "undo",
    ]
    assert http_version(base_url) == OLD_VERSION
    live = http_agents(base_url)
    assert live == {a: v.name for a, v in before_agents.items()}
    assert "AI/ML Expert" in live.values()
    assert sql_table_counts(running.database) == before_counts
    assert sql_agents(running.database) == before_agents
    assert alembic_revision(running.database) == ALEMBIC_HEADS[OLD_VERSION]

    # A second destructive flow on the same database is refused while one holds the lock,
    # even under another server name (the lock is the database's).
    from prefect import flow

    @flow
    def holder():
        with destructive_lock("another-name-same-database", 0, database=running.database):
            with pytest.raises(ServerBusy):
                upgrade(NEW_VERSION, strategy="migrate")

    holder()
    assert http_version(base_url) == OLD_VERSION
