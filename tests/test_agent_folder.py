"""Reading and planning a folder of agent files: what is refused whole, what is skipped."""

from __future__ import annotations

import json

import pytest

from letta_ops.tasks.letta.agent_folder import (
    SOURCE_ID_KEY,
    AgentFolderRefused,
    manifest_entry,
    plan_import,
    read_folder,
    require_importable,
    require_new_folder,
    write_agent_file,
    write_manifest,
)
from letta_ops.tasks.letta.agent_names import UNICODE

ID1 = "agent-11111111-1111-4111-8111-111111111111"
ID2 = "agent-22222222-2222-4222-8222-222222222222"


def _file(name: str, blocks: dict[str, str], messages: int = 2) -> bytes:
    """A multi-entity agent file as Letta 0.11.7+ writes it (the parts letta-ops reads)."""
    ids = [f"block-{i}" for i in range(len(blocks))]
    return json.dumps(
        {
            "agents": [
                {"id": "agent-0", "name": name, "block_ids": ids, "messages": [{}] * messages}
            ],
            "blocks": [
                {"id": i, "label": label, "value": value}
                for i, (label, value) in zip(ids, blocks.items(), strict=True)
            ],
            "tools": [],
        }
    ).encode()


def test_export_folder_reads_back_with_counts(tmp_path):
    folder = tmp_path / "out"
    require_new_folder(folder)
    written = write_agent_file(folder, ID1, _file("Café Ñandú", {"persona": "p", "human": "h"}, 3))
    write_manifest(folder, "prod", "0.14.0", [manifest_entry(written)], [])
    [agent] = read_folder(folder)
    assert (agent.agent_id, agent.name, agent.messages, len(agent.blocks)) == (
        ID1,
        "Café Ñandú",
        3,
        2,
    )
    with pytest.raises(AgentFolderRefused, match="not empty"):
        require_new_folder(folder)
    # A file changed after the export is refused, whole folder.
    (folder / written.file).write_bytes(_file("Café Ñandú", {"persona": "changed"}))
    with pytest.raises(AgentFolderRefused, match="sha256"):
        read_folder(folder)


def test_hand_made_folder_needs_ids_and_agent_files(tmp_path):
    (tmp_path / f"{ID1}.json").write_bytes(_file("a", {"persona": "p"}))
    (tmp_path / "notes.txt").write_text("ignored")
    assert [a.agent_id for a in read_folder(tmp_path)] == [ID1]
    (tmp_path / "agent-backup.json").write_bytes(_file("b", {}))
    with pytest.raises(AgentFolderRefused, match="no agent id"):
        read_folder(tmp_path)
    (tmp_path / "agent-backup.json").unlink()
    (tmp_path / f"x-{ID2}.json").write_text("{not json")
    with pytest.raises(AgentFolderRefused, match="not an agent file"):
        read_folder(tmp_path)
    with pytest.raises(AgentFolderRefused, match="not a folder"):
        read_folder(tmp_path / "missing")


def test_plan_skips_what_is_there_and_renames_what_clashes(tmp_path):
    (tmp_path / f"{ID1}.json").write_bytes(_file("AI/ML Expert", {}))
    (tmp_path / f"{ID2}.json").write_bytes(_file("Helper", {}))
    agents = read_folder(tmp_path)
    live = [{"id": "agent-x", "name": "Helper", "metadata": None}]
    steps = {s.agent_id: s for s in plan_import(agents, live, UNICODE)}
    assert steps[ID1].import_as == "AI-ML Expert" and steps[ID1].skip is None
    assert steps[ID2].import_as == "Helper-2" and steps[ID2].renamed
    # Imported before: the live agent records the source id.
    live.append({"id": "agent-new", "name": "AI-ML Expert", "metadata": {SOURCE_ID_KEY: ID1}})
    live.append({"id": ID2, "name": "Helper"})
    steps = {s.agent_id: s for s in plan_import(agents, live, UNICODE)}
    assert steps[ID1].skip == "imported before as agent-new"
    assert steps[ID2].skip == "exists by id"


def test_single_agent_files_are_refused_by_new_servers(tmp_path):
    (tmp_path / f"{ID1}.json").write_text(json.dumps({"name": "old", "memory": {"blocks": []}}))
    agents = read_folder(tmp_path)
    require_importable(agents, "0.11.7")
    with pytest.raises(AgentFolderRefused, match="single-agent format"):
        require_importable(agents, "0.16.2")
