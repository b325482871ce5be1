"""A rebuild 0.11.7 -> 0.16.2 gives back the names the target accepts (issue #31, item 5).

0.11.7 refuses to export ``Café Ñandú`` (its ASCII rule), so the name travels as ``Cafe Nandu``;
0.16.2 accepts it, so the agent must end up as the operator named it. ``AI/ML Expert`` is
refused by both and stays ``AI-ML Expert``, recorded as the one rename.
"""

from __future__ import annotations

import pytest

from letta_ops.flows.upgrade import upgrade
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, rename_agent, seed_agents
from tests.fixtures.oracle import http_agents, http_version, sql_agent_contents

pytestmark = pytest.mark.e2e


def test_rebuild_keeps_cafe_nandu_and_renames_only_what_the_target_refuses(
    start_letta, s3_env, s3_bucket, monkeypatch, prefect_harness
):
    _, bucket, _ = s3_bucket
    running = start_letta(OLD_VERSION, "rebuild-names")
    with running.client() as client:
        agents = seed_agents(client, 4, prefix="rn")
        rename_agent(client, agents[0]["id"], "Café Ñandú")
        rename_agent(client, agents[1]["id"], "AI/ML Expert")
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    contents_before = sql_agent_contents(running.database)
    assert "Café Ñandú" in contents_before  # the old server holds the name (PATCH let it in)

    report = upgrade(NEW_VERSION, strategy="rebuild")

    assert report.outcome == "succeeded"
    assert http_version(running.server.base_url) == NEW_VERSION
    # Only what the target refuses is renamed, in the report and on the server.
    assert {c.old: c.new for c in report.plan.renames.values()} == {"AI/ML Expert": "AI-ML Expert"}
    # The trip needed the ASCII form of both names; the report says so.
    assert {c.old: c.new for c in report.plan.transit_renames.values()} == {
        "AI/ML Expert": "AI-ML Expert",
        "Café Ñandú": "Cafe Nandu",
    }
    expected = sorted(["Café Ñandú", "AI-ML Expert", "rn-02", "rn-03"])
    assert sorted(http_agents(running.server.base_url).values()) == expected
    # The tests' own SQL: each agent's messages and blocks came across under its final name.
    after = {n: c.carried() for n, c in sql_agent_contents(running.database).items()}
    carried = {
        {"AI/ML Expert": "AI-ML Expert"}.get(n, n): c.carried() for n, c in contents_before.items()
    }
    assert after == carried
    row = next(r for r in report.verification if r.name_before == "Café Ñandú")
    assert row.name_after == "Café Ñandú" and row.messages_after is not None
