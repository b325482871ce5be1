"""Export every agent of a Letta server as an agent file into a backup set.

Why bounded concurrency: a server with hundreds of agents exports much faster with a few
requests in flight, but too many starve a small server. Why per-agent failure records: one
agent whose name the server cannot export (``AI/ML Expert`` answers 500) must not cost the
operator every other agent; the failure is recorded with the server's own error.

An agent unchanged since the previous verified set (``ReusePlan``, ``tasks/sets/export_reuse.py``)
gets that set's file, checked and copied, instead of an export; a reuse that fails falls back
to an export with one warning. Every entry records the fingerprint taken *before* its export
or copy, so a change during the export makes the next backup export again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..letta.api import LettaAPIError, LettaClient
from ..store.objects import ObjectStore, StoredObject
from .export_reuse import ReusePlan, reuse_agent_file
from .manifest import AgentEntry, agent_file_key

log = logging.getLogger(__name__)


def export_one(
    client: LettaClient,
    store: ObjectStore,
    prefix: str,
    agent: dict,
    fingerprint: str | None = None,
) -> tuple[AgentEntry, StoredObject | None]:
    common = {"id": agent["id"], "name": agent["name"], "fingerprint": fingerprint}
    try:
        data = client.export_agent(agent["id"])
    except LettaAPIError as exc:
        return AgentEntry(**common, error=str(exc)), None
    stored = store.put_bytes(agent_file_key(prefix, agent["id"]), data)
    return AgentEntry(**common, file=stored.key), stored


def reuse_or_export(
    client: LettaClient,
    store: ObjectStore,
    prefix: str,
    agent: dict,
    plan: ReusePlan,
    on_warning: Callable[[str], None],
) -> tuple[AgentEntry, StoredObject | None]:
    """The parent's file when the agent is unchanged and the copy checks, else an export."""
    fingerprint = plan.fingerprints.get(agent["id"])
    parent_entry = plan.reusable(agent["id"])
    if parent_entry is not None and plan.parent is not None:
        try:
            stored = reuse_agent_file(store, plan.parent, parent_entry, prefix)
        except Exception as exc:  # any failure of the copy: export it as if nothing was there
            on_warning(
                f"Agent {agent['id']}'s file in set {plan.parent.set_id} could not be reused "
                f"({str(exc).rstrip('.') or type(exc).__name__}); exporting it again."
            )
        else:
            entry = AgentEntry(
                id=agent["id"],
                name=agent["name"],
                file=stored.key,
                fingerprint=fingerprint,
                reused_from=plan.parent.set_id,
            )
            return entry, stored
    return export_one(client, store, prefix, agent, fingerprint)


def export_agents(
    client: LettaClient,
    agents: list[dict],
    store: ObjectStore,
    prefix: str,
    concurrency: int = 4,
    on_done: Callable[[AgentEntry], None] = lambda _entry: None,
    plan: ReusePlan | None = None,
    on_warning: Callable[[str], None] = log.warning,
) -> tuple[list[AgentEntry], list[StoredObject]]:
    """Export ``agents`` (dicts with ``id`` and ``name``) in order of the input list, reusing
    the files ``plan`` allows."""
    plan = plan or ReusePlan()
    entries: list[AgentEntry] = []
    stored: list[StoredObject] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="export") as pool:
        futures = [
            pool.submit(reuse_or_export, client, store, prefix, a, plan, on_warning) for a in agents
        ]
        for future in futures:
            entry, obj = future.result()
            entries.append(entry)
            if obj is not None:
                stored.append(obj)
            on_done(entry)
    return entries, stored
