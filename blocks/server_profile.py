"""Everything letta-ops needs to know about one Letta server, from saved blocks or the env.

Why: operators run flows two ways. Teams save blocks once (``--server prod`` loads the blocks
named ``prod``); a single operator just exports the variables they already use
(``LETTA_BASE_URL``, ``LETTA_API_KEY``, ``LETTA_PG_URI``). Both end in the same profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blocks.letta_database import LettaDatabase
from blocks.letta_runtime import LettaRuntime
from blocks.letta_server import LettaServer
from blocks.process_runtime import LettaProcessRuntime
from tasks.errors import Refused

#: ``LETTA_OPS_RUNTIME`` values, and what each reads from the environment.
RUNTIME_KINDS = ("process", "compose", "command", "manual")


class ProfileError(Refused):
    """The server's configuration is missing or unusable; the message says how to fix it."""


@dataclass
class ServerProfile:
    server: LettaServer
    database: LettaDatabase | None
    #: Whatever runs the server (process, compose, command, manual): flows only use the
    #: :class:`LettaRuntime` interface.
    runtime: LettaRuntime

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
    return ServerProfile(letta, database, runtime_from_env(letta.server_name))


def runtime_from_env(server_name: str) -> LettaRuntime:
    """The runtime ``LETTA_OPS_RUNTIME`` names (default: letta-ops' process runtime)."""
    kind = (os.environ.get("LETTA_OPS_RUNTIME") or "process").strip().lower()
    if kind == "process":
        return LettaProcessRuntime.from_env(server_name)
    if kind == "compose":
        from blocks.compose_runtime import DockerComposeRuntime

        if not os.environ.get("LETTA_OPS_COMPOSE_FILE"):
            raise ProfileError(
                "LETTA_OPS_RUNTIME=compose needs LETTA_OPS_COMPOSE_FILE, the compose file "
                "that defines the Letta server service."
            )
        return DockerComposeRuntime.from_env()
    if kind == "command":
        from blocks.command_runtime import LettaCommandRuntime

        return LettaCommandRuntime.from_env()
    if kind == "manual":
        from blocks.manual_runtime import LettaManualRuntime

        return LettaManualRuntime.from_env()
    raise ProfileError(
        f"LETTA_OPS_RUNTIME={kind!r} is not a runtime; use one of {', '.join(RUNTIME_KINDS)}."
    )


def saved_runtime(name: str) -> LettaRuntime | None:
    """The runtime block saved under ``name``, of whichever kind (None: none saved)."""
    from blocks.command_runtime import LettaCommandRuntime
    from blocks.compose_runtime import DockerComposeRuntime
    from blocks.manual_runtime import LettaManualRuntime

    kinds = (LettaProcessRuntime, DockerComposeRuntime, LettaCommandRuntime, LettaManualRuntime)
    for block_type in kinds:
        try:
            return block_type.load(name)
        except ValueError:
            continue
    return None


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
    runtime = saved_runtime(name) or runtime_from_env(letta.server_name)
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
