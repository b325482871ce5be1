"""The rebuild's route for sources whose agent files the target cannot import (<= 0.11.6).

No server <= 0.11.6 migrates offline here (their sdists lack migrations), so the route is
exercised on a real 0.11.7 source: restore its verified backup into a scratch database,
migrate the copy to 0.16.2, export from a scratch 0.16.2 server. The real server is untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from letta_ops.flows.backup import backup
from letta_ops.flows.steps.scratch_export import export_via_scratch_copy, exports_v1_agent_files
from letta_ops.tasks.letta.agent_names import name_rule_for, plan_renames
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, rename_agent, seed_agents

pytestmark = pytest.mark.e2e


def test_version_rule():
    assert exports_v1_agent_files("0.11.3") and exports_v1_agent_files("0.11.6")
    assert not exports_v1_agent_files("0.11.7") and not exports_v1_agent_files("0.16.2")


def test_scratch_copy_exports_every_agent_in_the_targets_format(
    start_letta, s3_env, s3_bucket, prefect_harness, monkeypatch, tmp_path
):
    from letta_ops.blocks.server_profile import load_profile

    running = start_letta(OLD_VERSION, "scratch-src")
    with running.client() as client:
        agents = seed_agents(client, 3, prefix="scratch")
        rename_agent(client, agents[1]["id"], "AI/ML Expert")
        before = {a["id"]: a["name"] for a in client.list_agents()}
    client_s3, bucket, _ = s3_bucket
    for name, value in operator_env(running).items():
        monkeypatch.setenv(name, value)
    report = backup(store=f"s3://{bucket}/scratch", allow_partial_agents=True)
    store = S3ObjectStore(client_s3, bucket, "scratch")
    manifest = load_manifest(store, *report.set.split("/"))
    profile = load_profile(None, need_database=True)
    renames = plan_renames(
        [{"id": a, "name": n} for a, n in before.items()], name_rule_for(NEW_VERSION)
    )
    assert [c["new"] for c in renames.values()] == ["AI-ML Expert"]

    files = export_via_scratch_copy(
        profile, store, manifest, NEW_VERSION, tmp_path, renames, log=lambda _: None
    )

    assert set(files) == set(before)  # the agent 0.11.7 could not export came across too
    for agent_id, path in files.items():
        document = json.loads(Path(path).read_bytes())
        assert "agents" in document and document["agents"], agent_id  # multi-entity format
        expected = renames.get(agent_id, {}).get("new", before[agent_id])
        assert document["agents"][0]["name"] == expected
    with running.client() as client:  # the real server never changed
        assert client.health()["version"] == OLD_VERSION
        assert {a["id"]: a["name"] for a in client.list_agents()} == before
    with connect(running.database.for_database("postgres")) as conn:
        from sqlalchemy import text

        left = conn.execute(
            text("SELECT count(*) FROM pg_database WHERE datname LIKE 'letta_ops_scratch_%'")
        ).scalar_one()
    assert left == 0
