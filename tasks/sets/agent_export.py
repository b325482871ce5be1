"""Export every agent of a Letta server as an agent file into a backup set.

Why bounded concurrency: a server with hundreds of agents exports much faster with a few
requests in flight, but too many starve a small server. Why per-agent failure records: one
agent whose name the server cannot export (``AI/ML Expert`` answers 500) must not cost the
operator every other agent; the failure is recorded with the server's own error.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..letta.api import LettaAPIError, LettaClient
from ..store.objects import ObjectStore, StoredObject
from .manifest import AgentEntry, agent_file_key


def export_one(
    client: LettaClient, store: ObjectStore, prefix: str, agent: dict
) -> tuple[AgentEntry, StoredObject | None]:
    try:
        data = client.export_agent(agent["id"])
    except LettaAPIError as exc:
        return AgentEntry(id=agent["id"], name=agent["name"], error=str(exc)), None
    stored = store.put_bytes(agent_file_key(prefix, agent["id"]), data)
    return AgentEntry(id=agent["id"], name=agent["name"], file=stored.key), stored


def export_agents(
    client: LettaClient,
    agents: list[dict],
    store: ObjectStore,
    prefix: str,
    concurrency: int = 4,
    on_done: Callable[[AgentEntry], None] = lambda _entry: None,
) -> tuple[list[AgentEntry], list[StoredObject]]:
    """Export ``agents`` (dicts with ``id`` and ``name``) in order of the input list."""
    entries: list[AgentEntry] = []
    stored: list[StoredObject] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="export") as pool:
        futures = [pool.submit(export_one, client, store, prefix, a) for a in agents]
        for future in futures:
            entry, obj = future.result()
            entries.append(entry)
            if obj is not None:
                stored.append(obj)
            on_done(entry)
    return entries, stored
