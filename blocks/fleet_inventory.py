"""The fleet: saved Letta Server blocks with their tags, and how each server stands.

Why from blocks: a team already saves one Letta Server block per server (``--server NAME``);
tags on those blocks (``env:prod``, ``team:search``) are the whole inventory. Nothing else has
to be kept in step with it.
"""

from __future__ import annotations

from typing import Any

from ..tasks.runs.server_selection import ServerEntry, select_servers

#: The Prefect block type slug of :class:`letta_ops.blocks.letta_server.LettaServer`.
SERVER_BLOCK_SLUG = "letta-server"


def saved_servers() -> list[ServerEntry]:
    """Every saved Letta Server block, by block name, with its tags (no secrets read)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(SERVER_BLOCK_SLUG, include_secrets=False)
    return [
        ServerEntry(
            name=doc.name,
            tags=tuple(doc.data.get("tags") or ()),
            base_url=str(doc.data.get("base_url") or ""),
        )
        for doc in documents
        if doc.name and not doc.is_anonymous
    ]


def selected_servers(selector: str) -> list[ServerEntry]:
    """The saved servers ``selector`` picks. With no saved server at all, ``*`` is the one
    server the environment configures (``LETTA_BASE_URL``/``LETTA_PG_URI``; name ``""``): a
    single operator's nightly fleet backup is their server's backup."""
    inventory = saved_servers()
    if not inventory and selector.strip() == "*":
        return [ServerEntry(name="")]
    return select_servers(inventory, selector)


def server_overview(entry: ServerEntry, store: str | None = None) -> dict[str, Any]:
    """Version and health (one probe) and the newest verified backup set of one server."""
    from ..tasks.letta.health import probe_health
    from ..tasks.sets.catalog import list_backup_sets
    from .server_profile import open_backup_store

    health = probe_health(entry.base_url) if entry.base_url else None
    newest: dict[str, Any] = {"newest_verified_set": None, "newest_verified_at": None}
    try:
        objects = open_backup_store(store, entry.name)
        verified = [s for s in list_backup_sets(objects, entry.name) if s.complete and s.verified]
        if verified:
            newest = {
                "newest_verified_set": f"{entry.name}/{verified[0].set_id}",
                "newest_verified_at": verified[0].created_at.isoformat()
                if verified[0].created_at
                else None,
            }
    except Exception as exc:  # noqa: BLE001 - one server's store must not hide the others
        newest["store_error"] = str(exc).splitlines()[0]
    return {
        "server": entry.name,
        "tags": list(entry.tags),
        "base_url": entry.base_url,
        "health": "ok" if health else "down",
        "version": health.get("version") if health else None,
        **newest,
    }
