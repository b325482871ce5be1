"""Everything letta-ops needs to know about one Letta server, from saved blocks or the env.

Why: operators run flows two ways. Teams save blocks once (``--server prod`` loads the blocks
named ``prod``); a single operator just exports the variables they already use
(``LETTA_BASE_URL``, ``LETTA_API_KEY``, ``LETTA_PG_URI``). Both end in the same profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blocks.letta_database import LettaDatabase
from blocks.letta_server import LettaServer
from blocks.process_runtime import LettaProcessRuntime
from tasks.errors import Refused


class ProfileError(Refused):
    """The server's configuration is missing or unusable; the message says how to fix it."""


@dataclass
class ServerProfile:
    server: LettaServer
    database: LettaDatabase | None
    runtime: LettaProcessRuntime

    @property
    def name(self) -> str:
        return self.server.server_name

    def require_database(self) -> LettaDatabase:
        if self.database is None:
            raise ProfileError(
                "No database is configured for this server; set LETTA_PG_URI or save a "
                f"Letta Database block named {self.name!r}."
            )
        return self.database


def load_profile(server: str | None = None, need_database: bool = False) -> ServerProfile:
    """Load the saved blocks called ``server``, else build the profile from the environment."""
    if server:
        return _load_saved(server, need_database)
    letta = LettaServer.from_env()
    database = (
        LettaDatabase.from_env() if (need_database or os.environ.get("LETTA_PG_URI")) else None
    )
    return ServerProfile(letta, database, LettaProcessRuntime.from_env(letta.server_name))


def _load_saved(name: str, need_database: bool) -> ServerProfile:
    try:
        letta = LettaServer.load(name)
    except ValueError as exc:
        raise ProfileError(
            f"No saved Letta Server block named {name!r}; save one (see README) or drop "
            "--server to use LETTA_BASE_URL and LETTA_PG_URI."
        ) from exc
    if not letta.name:
        letta.name = name
    try:
        database: LettaDatabase | None = LettaDatabase.load(name)
    except ValueError:
        if need_database:
            raise ProfileError(
                f"No saved Letta Database block named {name!r}; save one or set LETTA_PG_URI."
            ) from None
        database = None
    try:
        runtime = LettaProcessRuntime.load(name)
    except ValueError:
        runtime = LettaProcessRuntime.from_env(letta.server_name)
    return ServerProfile(letta, database, runtime)


def open_backup_store(store: str | None = None, server: str | None = None):
    """The backup store: ``--store URL``, else ``LETTA_OPS_STORE``, else a saved block.

    Saved blocks are looked up under the server's name (an S3 or a local backup store).
    """
    from blocks.backup_store import LocalBackupStore, S3BackupStore
    from tasks.object_store import open_store

    url = store or os.environ.get("LETTA_OPS_STORE")
    if url:
        return open_store(url)
    if server:
        for block_type in (S3BackupStore, LocalBackupStore):
            try:
                return block_type.load(server).object_store()
            except ValueError:
                continue
    raise ProfileError(
        "No backup store is configured; pass --store s3://BUCKET/PREFIX or "
        "--store file:///PATH, or set LETTA_OPS_STORE."
    )
