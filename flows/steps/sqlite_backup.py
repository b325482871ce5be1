"""The steps a backup of a SQLite server takes where a PostgreSQL server's takes pg_dump.

Why a module of its own: the set, its agent files, the manifest written last and
authenticated, and verification from storage are the same for both engines (flows/backup.py);
only what is inspected and how the database itself is copied differ. A SQLite server's copy
is made by SQLite's online backup API while the server runs (tasks/sqlite/online_copy.py),
counted in the copy, and stored as the set's ``database.sqlite``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ...blocks.server_profile import ServerProfile
from ...tasks.errors import Failed
from ...tasks.letta.api import LettaAPIError, LettaClient
from ...tasks.runs import progress_events
from ...tasks.sqlite.database import SqliteDatabase
from ...tasks.sqlite.online_copy import SqliteCopy, online_copy
from ...tasks.store.objects import ObjectStore, StoredObject


class SqliteServerDown(Failed):
    """A SQLite server's backup needs the server up: only it says its version."""


@dataclass(frozen=True)
class StoredSqliteCopy:
    """The copy as stored in the set, and what was read from it before it was uploaded."""

    stored: StoredObject
    copy: SqliteCopy

    @property
    def row_counts(self) -> dict[str, int]:
        return self.copy.row_counts


@task(name="inspect-sqlite-server", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def inspect_sqlite_server(profile: ServerProfile, sqlite: SqliteDatabase) -> dict[str, Any]:
    """Version and agents from the running server (its file has no alembic revision: Letta
    builds a SQLite schema with ``create_all``). The file must exist before anything else."""
    if not sqlite.path.is_file():
        raise SqliteServerDown(
            f"There is no SQLite database at {sqlite.path}; check LETTA_OPS_SQLITE_DB."
        )
    try:
        with LettaClient(profile.server) as client:
            health = client.health()
            agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
    except LettaAPIError as exc:
        if exc.status != 0:
            raise
        raise SqliteServerDown(
            f"The Letta server at {profile.server.base_url} does not answer; a SQLite server "
            "is backed up while it runs (start it with `letta-ops runtime start`)."
        ) from exc
    return {
        "version": health.get("version"),
        "status": health.get("status"),
        "alembic_revision": None,
        "agents": agents,
    }


@task(name="copy-sqlite-database", cache_policy=NO_CACHE)
def copy_sqlite_task(sqlite: SqliteDatabase, store: ObjectStore, key: str) -> StoredSqliteCopy:
    """The online copy in a private temporary directory, counted, then stored under ``key``."""
    progress = progress_events.reporter()
    progress.start("upload sqlite copy", None, "bytes")
    try:
        with tempfile.TemporaryDirectory(prefix="letta-ops-sqlite-") as tmp:
            copy = online_copy(sqlite.path, Path(tmp) / "sqlite.db")
            stored = store.put_file(
                key, copy.path, progress=lambda n: progress.advance("upload sqlite copy", n)
            )
            return StoredSqliteCopy(stored, copy)
    finally:
        progress.finish("upload sqlite copy")


def sqlite_manifest_fields(sqlite: SqliteDatabase, result: StoredSqliteCopy) -> dict[str, Any]:
    """What a SQLite set's manifest says about its database (no PostgreSQL field)."""
    return {
        "engine": "sqlite",
        "database_name": sqlite.path.name,
        "db_schema": "main",
        "sqlite_version": result.copy.sqlite_version,
        "pgvector_version": None,
        "table_bytes": {},
        "dump_compression": "none",
        "tool_versions": {"sqlite": result.copy.sqlite_version},
    }
