"""What an agent file (``.af``) holds, and giving its agent another name before import.

Why: an agent-level restore must say what it brought back ("3 blocks, 12 messages, as
exported") and must be able to import the agent under a name the running server accepts, or
beside the live agent as a copy. Letta 0.11.7+ write the multi-entity format (top-level
``agents``, ``blocks``, ...); <= 0.11.6 wrote a single agent at the top level. Both are JSON,
so renaming is a change to the file itself, the same on every server version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class AgentFileError(ValueError):
    """The bytes are not an agent file letta-ops can read."""


@dataclass(frozen=True)
class AgentFileSummary:
    """The agent in a file, as exported: its name, memory blocks and message count."""

    name: str
    blocks: dict[str, str]  # label -> value
    messages: int
    multi_entity: bool


def _load(data: bytes) -> dict:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise AgentFileError(f"The agent file is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AgentFileError("The agent file is not a JSON object.")
    return document


def _single_agent(document: dict) -> dict:
    agents = document.get("agents")
    if agents is None:
        return document  # the old single-agent format
    if not isinstance(agents, list) or len(agents) != 1:
        count = len(agents) if isinstance(agents, list) else "no"
        raise AgentFileError(f"The agent file holds {count} agents, not exactly one.")
    return agents[0]


def summarize_agent_file(data: bytes) -> AgentFileSummary:
    document = _load(data)
    agent = _single_agent(document)
    if "agents" in document:
        by_id = {b.get("id"): b for b in document.get("blocks") or []}
        blocks = {
            by_id[b]["label"]: by_id[b].get("value", "")
            for b in agent.get("block_ids") or []
            if b in by_id
        }
    else:
        memory = agent.get("memory") or {}
        blocks = {b["label"]: b.get("value", "") for b in memory.get("blocks") or []}
    return AgentFileSummary(
        name=str(agent.get("name", "")),
        blocks=blocks,
        messages=len(agent.get("messages") or []),
        multi_entity="agents" in document,
    )


def rename_agent_file(data: bytes, new_name: str) -> bytes:
    """The same agent file with its agent called ``new_name``; nothing else changes."""
    document = _load(data)
    _single_agent(document)["name"] = new_name
    return json.dumps(document).encode()
