"""An agent imported from a file, checked against that file: one step of restore-agents and
import-agents.

Why a module of its own: both flows import agent files and must prove each one the same way
(its name, its memory blocks, at least its messages), and one flow importing another's task
tied two operator jobs together.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ...blocks.server_profile import ServerProfile
from ...tasks.letta.api import LettaClient
from ...tasks.postgres.letta_inventory import agent_inventory


@task(name="check-restored-agent", cache_policy=NO_CACHE)
def check_restored_step(profile: ServerProfile, imported: dict[str, Any]) -> dict[str, Any]:
    """The restored agent by its new id: name, memory blocks and messages against the file."""
    new_id = imported["new_ids"][0] if imported["new_ids"] else None
    with LettaClient(profile.server) as client:
        agent = client.get_agent(new_id) if new_id else {}
    blocks = agent.get("memory", {}).get("blocks") or agent.get("blocks") or []
    restored_blocks = {b["label"]: b.get("value", "") for b in blocks}
    messages = None
    if profile.database is not None and new_id:
        messages = agent_inventory(profile.database).get(new_id, {}).get("messages")
    checks = {
        "name": agent.get("name") == imported["restore_as"],
        "blocks": restored_blocks == imported["blocks_in_file"],
        "messages": messages is None or messages >= imported["messages_in_file"],
    }
    return {
        "agent_id": imported["agent_id"],
        "name_in_set": imported["name_in_set"],
        "restored_as": imported["restore_as"],
        "renamed": imported["renamed"],
        "new_id": new_id,
        "blocks": len(restored_blocks),
        "blocks_match": checks["blocks"],
        "messages_in_file": imported["messages_in_file"],
        "messages_restored": messages,
        "ok": all(checks.values()),
    }
