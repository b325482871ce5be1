"""Agents between servers (issue #31, item 3): ``export-agents`` from Letta 0.11.7 and
``import-agents`` into 0.16.2, from letta-ops' folder and from one made by hand with Letta's
export endpoint; per agent, messages and blocks compared by the tests' own SQL."""

from __future__ import annotations

import json

import httpx
import pytest

from letta_ops.cli.main import main
from letta_ops.flows.export_agents import export_agents
from letta_ops.flows.import_agents import import_agents
from tests.fixtures.letta import NEW_VERSION, OLD_VERSION, operator_env, rename_agent, seed_agents
from tests.fixtures.oracle import http_agents, sql_agent_contents, sql_agents

pytestmark = pytest.mark.e2e


def _point_at(monkeypatch, running) -> None:
    for name, value in operator_env(running).items():
        monkeypatch.setenv(name, value)


def test_export_from_0_11_7_and_import_into_0_16_2(
    start_letta, monkeypatch, prefect_harness, tmp_path, capsys
):
    source = start_letta(OLD_VERSION, "port-src")
    with source.client() as client:
        agents = seed_agents(client, 4, prefix="pt")
        rename_agent(client, agents[3]["id"], "AI/ML Expert")  # 0.11.7 cannot export it
    target = start_letta(NEW_VERSION, "port-dst")
    with target.client() as client:
        seed_agents(client, 1, prefix="pt")  # a live 'pt-00' the import must not duplicate
    src_rows = sql_agents(source.database)
    src_contents = sql_agent_contents(source.database)

    # Export: one file per agent by id, the manifest's names and counts as SQL has them.
    _point_at(monkeypatch, source)
    folder = tmp_path / "export"
    report = export_agents(str(folder))
    assert (report.exported, report.failed) == (3, 1)
    [failed] = [a for a in report.agents if a.error]
    assert failed.name == "AI/ML Expert" and failed.file is None
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {a["id"]: a["name"] for a in manifest["agents"]} == {
        a: r.name for a, r in src_rows.items() if r.name != "AI/ML Expert"
    }
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{a['id']}.af" for a in manifest["agents"]] + ["manifest.json"]
    )
    for row in report.agents:
        assert row.messages_on_server == src_rows[row.agent_id].messages
        assert row.blocks_on_server == src_rows[row.agent_id].blocks
        if row.file:
            assert row.blocks_in_file == src_rows[row.agent_id].blocks
    # A second export into the same folder is refused, nothing overwritten.
    assert main(["export-agents", str(folder)]) == 2
    assert "not empty" in capsys.readouterr().err

    # Import into 0.16.2: 'pt-00' is live there, so the imported one is renamed and recorded.
    _point_at(monkeypatch, target)
    dst_before = sql_agents(target.database)
    plan = import_agents(str(folder), dry_run=True)
    assert plan.outcome == "planned" and sql_agents(target.database) == dst_before
    report = import_agents(str(folder))
    assert (report.outcome, report.imported, report.skipped, report.renamed) == (
        "succeeded",
        3,
        0,
        1,
    )
    assert {a.name_in_file: a.imported_as for a in report.agents if a.renamed} == {
        "pt-00": "pt-00-2"
    }
    dst_contents = sql_agent_contents(target.database)
    for name in ("pt-00", "pt-01", "pt-02"):
        imported_as = "pt-00-2" if name == "pt-00" else name
        assert dst_contents[imported_as].carried() == src_contents[name].carried(), name
    dst_after = sql_agents(target.database)
    assert len(dst_after) == len(dst_before) + 3

    # A second import (and the same agents in a hand-made folder) skips every agent.
    again = import_agents(str(folder))
    assert (again.imported, again.skipped) == (0, 3)
    by_hand = tmp_path / "letta-backup-by-hand"
    by_hand.mkdir()
    for agent_id, row in src_rows.items():
        if row.name == "AI/ML Expert":
            continue
        response = httpx.get(f"{source.server.base_url}/v1/agents/{agent_id}/export", timeout=60)
        (by_hand / f"agent-{agent_id}.json").write_bytes(response.raise_for_status().content)
    # Letta's own ids already start with 'agent-': the file name carries the id once more.
    hand = import_agents(str(by_hand))
    assert (hand.imported, hand.skipped) == (0, 3)
    assert sql_agents(target.database) == dst_after

    # The hand-made folder imports for real once those agents are gone.
    with target.client() as client:
        for new_id, name in http_agents(target.server.base_url).items():
            if name in {"pt-00-2", "pt-01", "pt-02"}:
                client.delete_agent(new_id)
    hand = import_agents(str(by_hand))
    assert (hand.outcome, hand.imported, hand.skipped) == ("succeeded", 3, 0)
    dst_contents = sql_agent_contents(target.database)
    assert dst_contents["pt-01"].carried() == src_contents["pt-01"].carried()

    # A folder with a file that is not an agent file is refused whole: nothing imported.
    (by_hand / f"agent-{'0' * 8}-0000-4000-8000-{'0' * 12}.json").write_text("<html>")
    before = sql_agents(target.database)
    assert main(["import-agents", str(by_hand)]) == 2
    assert "is not an agent file" in capsys.readouterr().err
    assert sql_agents(target.database) == before
