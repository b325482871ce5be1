"""Everything letta-ops needs to know about one Letta server, from saved blocks or the env.

Why: operators run flows two ways. Teams save blocks once (``--server prod`` loads the blocks
named ``prod``); a single operator just exports the variables they already use
(``LETTA_BASE_URL``, ``LETTA_API_KEY``, ``LETTA_PG_URI``). Both end in the same profile.

Importing this module loads no block (and so no Prefect): the read-only commands ask it for the
server's name (:func:`server_name`) and the process runtime's state directory
(:func:`process_state_dir`), which the environment alone gives; only a profile loads blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..tasks.errors import Refused, validation_sentence
from ..tasks.sqlite.database import SqliteDatabase
from .runtime_kinds import RUNTIME_KINDS

if TYPE_CHECKING:
    from .letta_database import LettaDatabase
    from .letta_runtime import LettaRuntime
    from .letta_server import LettaServer


class ProfileError(Refused):
    """The server's configuration is missing or unusable; the message says how to fix it."""


@dataclass
class ServerProfile:
    server: LettaServer
    database: LettaDatabase | None
    #: Whatever runs the server (process, compose, command, manual): flows only use the
    #: :class:`LettaRuntime` interface.
    runtime: LettaRuntime
    #: A server without PostgreSQL: Letta's SQLite file (``LETTA_OPS_SQLITE_DB``).
    sqlite: SqliteDatabase | None = None

    def __post_init__(self) -> None:
        # A server letta-ops starts must demand the password its profile uses.
        self.runtime = self.runtime.with_server_password(self.server.password)

    @property
    def name(self) -> str:
        return self.server.server_name

    def require_database(self) -> LettaDatabase:
        if self.sqlite is not None:
            raise ProfileError(
                f"The server {self.name!r} keeps its data in SQLite ({self.sqlite.path}), and "
                "this command needs PostgreSQL: move it first with `letta-ops move-to-postgres`."
            )
        if self.database is None:
            raise ProfileError(
                "No database is configured for this server; set LETTA_PG_URI (or "
                "LETTA_OPS_SQLITE_DB for a SQLite server) or save a Letta Database block "
                f"named {self.name!r}."
            )
        return self.database


def load_profile(server: str | None = None, need_database: bool = False) -> ServerProfile:
    """Load the saved blocks called ``server``, else build the profile from the environment.

    Configuration that fails validation (a bad URL in ``LETTA_BASE_URL``, a saved block with a
    wrong value) is refused here, before anything runs, as a :class:`ProfileError`.
    """
    from pydantic import ValidationError

    try:
        if server:
            return _load_saved(server, need_database)
        return _from_env(need_database)
    except ValidationError as exc:
        raise ProfileError(validation_sentence(exc)) from exc


def _from_env(need_database: bool) -> ServerProfile:
    from .letta_database import LettaDatabase
    from .letta_server import LettaServer

    letta = LettaServer.from_env()
    runtime = runtime_from_env(letta.server_name)
    if sqlite := sqlite_from_env():
        if runtime.kind != "process":
            raise ProfileError(
                f"A SQLite server runs under letta-ops' process runtime only, not "
                f"LETTA_OPS_RUNTIME={runtime.kind}; unset LETTA_OPS_RUNTIME, or move the server "
                "to PostgreSQL first with `letta-ops move-to-postgres`."
            )
        return ServerProfile(letta, None, runtime, sqlite)
    database = (
        LettaDatabase.from_env() if (need_database or os.environ.get("LETTA_PG_URI")) else None
    )
    return ServerProfile(letta, database, runtime)


def sqlite_from_env() -> SqliteDatabase | None:
    """``LETTA_OPS_SQLITE_DB``: the SQLite file of a server that has no PostgreSQL, as Letta's
    log names it (``sqlite:////home/op/.letta/sqlite.db``), the file, or its ``.letta``
    directory. Refused beside ``LETTA_PG_URI``: a server has one database."""
    reference = os.environ.get("LETTA_OPS_SQLITE_DB", "").strip()
    if not reference:
        return None
    if os.environ.get("LETTA_PG_URI"):
        raise ProfileError(
            "Both LETTA_PG_URI and LETTA_OPS_SQLITE_DB are set; a Letta server has one "
            "database: unset the one it does not use."
        )
    return SqliteDatabase.from_reference(reference)


def server_name(server: str | None = None) -> str:
    """The server's name (backup paths, the audit): the saved blocks' when ``server`` is given,
    else what ``LETTA_OPS_SERVER_NAME`` / ``LETTA_BASE_URL`` give -- without loading a block."""
    if server:
        return load_profile(server).name
    from ..tasks.server_naming import server_name_from_env

    return server_name_from_env()


def runtime_kind() -> str:
    """The runtime kind ``LETTA_OPS_RUNTIME`` names (default: letta-ops' process runtime)."""
    return (os.environ.get("LETTA_OPS_RUNTIME") or "process").strip().lower()


def process_state_dir(server: str | None = None, state_dir: Path | None = None) -> Path | None:
    """Where letta-ops' process runtime keeps the server's pid file, log and HOME when the
    environment configures that runtime (no ``server``, ``LETTA_OPS_RUNTIME`` unset or
    ``process``): ``state_dir`` if given, else the default for the server's name. None when
    saved blocks or another runtime kind decide (load the profile then)."""
    if server or runtime_kind() != "process":
        return None
    if state_dir is not None:
        return state_dir
    from ..tasks.runtimes.install import default_state_dir

    return default_state_dir(server_name())


def runtime_from_env(server_name: str) -> LettaRuntime:
    """The runtime ``LETTA_OPS_RUNTIME`` names (default: letta-ops' process runtime)."""
    name = runtime_kind()
    kind = RUNTIME_KINDS.get(name)
    if kind is None:
        raise ProfileError(
            f"LETTA_OPS_RUNTIME={name!r} is not a runtime; use one of {', '.join(RUNTIME_KINDS)}."
        )
    for variable, what in kind.required_env:
        if not os.environ.get(variable):
            raise ProfileError(f"LETTA_OPS_RUNTIME={name} needs {variable}, {what}.")
    return kind.block_type().from_env(server_name)


def saved_runtime(name: str) -> LettaRuntime | None:
    """The runtime block saved under ``name``, of whichever kind (None: none saved)."""
    for kind in RUNTIME_KINDS.values():
        try:
            return kind.block_type().load(name)
        except ValueError:
            continue
    return None


def _load_saved(name: str, need_database: bool) -> ServerProfile:
    from .letta_database import LettaDatabase
    from .letta_server import LettaServer

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

    Saved blocks are looked up under the server's name (an S3 or a local backup store). With
    an encryption key (the block's, or ``LETTA_OPS_ENCRYPTION_KEY``...) the store encrypts
    new sets and decrypts old ones (:func:`letta_ops.blocks.backup_store.with_store_encryption`).
    """
    url = store or os.environ.get("LETTA_OPS_STORE")
    if url:  # a repository URL: no block, no Prefect
        from ..tasks.sets.authentication import open_repository
        from ..tasks.store.locations import open_store

        return open_repository(open_store(url))
    if server:
        from .backup_store import (
            LocalBackupStore,
            S3BackupStore,
            with_store_encryption,
        )

        for block_type in (S3BackupStore, LocalBackupStore):
            try:
                block = block_type.load(server)
            except ValueError:
                continue
            return with_store_encryption(block.object_store(), block)
    raise ProfileError(
        "No backup store is configured; pass --store s3://BUCKET/PREFIX or "
        "--store file:///PATH, or set LETTA_OPS_STORE."
    )
