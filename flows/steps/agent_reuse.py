"""The reuse plan of a backup: the agents' fingerprints, then the previous set to reuse from.

Why a step of its own: it composes two systems (PostgreSQL for the fingerprints,
``tasks/postgres/agent_fingerprints.py``; the store for the parent set,
``tasks/sets/export_reuse.py``), which is a flow's business, and it runs first thing in the
backup's export task, beside the dump. A fingerprint or a parent that cannot be had costs the
reuse (every agent is exported), never the backup.
"""

from __future__ import annotations

from collections.abc import Callable

from ...tasks.postgres.agent_fingerprints import agent_fingerprints
from ...tasks.postgres.database import PostgresDatabase
from ...tasks.sets.export_reuse import ReusePlan, parent_set
from ...tasks.store.objects import ObjectStore


def reuse_plan(
    database: PostgresDatabase,
    store: ObjectStore,
    server: str,
    letta_version: str | None,
    alembic_revision: str | None,
    full_exports: bool,
    on_warning: Callable[[str], None],
) -> ReusePlan:
    """The run's fingerprints and, unless ``full_exports``, its parent set (with
    ``full_exports`` the fingerprints are still recorded, for the next backup)."""
    try:
        taken = agent_fingerprints(database)
    except Exception as exc:
        on_warning(
            f"The agents' fingerprints could not be taken ({str(exc).rstrip('.')}); every "
            "agent is exported."
        )
        return ReusePlan()
    if full_exports:
        return ReusePlan(taken.by_agent, seconds=taken.seconds)
    try:
        parent = parent_set(store, server, letta_version, alembic_revision)
    except Exception as exc:
        on_warning(
            f"The previous sets could not be read ({str(exc).rstrip('.')}); every agent is "
            "exported."
        )
        parent = None
    return ReusePlan(taken.by_agent, parent, seconds=taken.seconds)
