"""Agent files written by the *target* Letta version, from a scratch copy of the backup.

Why: Letta <= 0.11.6 exports the old single-agent format ("v1") that >= 0.12 refuses to import,
so a rebuild from such a server cannot use the source's own agent files. Restoring the verified
pre-upgrade dump into a scratch database, migrating that copy to the target and exporting from a
target server running on it gives files the target imports, and the real server is not touched
until they exist. Names the target would refuse are changed on the scratch copy only.
"""

from __future__ import annotations

import secrets
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from packaging.version import Version
from pydantic import SecretStr

from ...blocks.letta_server import LettaServer
from ...blocks.process_runtime import LettaProcessRuntime
from ...blocks.server_profile import ServerProfile
from ...tasks.letta.api import LettaClient
from ...tasks.postgres.embedded import free_loopback_port
from ...tasks.postgres.letta_schema import drop_database
from ...tasks.sets.manifest import BackupManifest
from ...tasks.store.objects import ObjectStore
from .restore_server import restore_database_from_set

#: The first release whose agent files (multi-entity format) >= 0.12 can import.
FIRST_MULTI_ENTITY_EXPORT = Version("0.11.7")


def exports_v1_agent_files(version: str) -> bool:
    """True for versions whose agent files the target cannot import (the old "v1" format)."""
    return Version(version) < FIRST_MULTI_ENTITY_EXPORT


def secured_scratch(
    profile: ServerProfile, port: int, state_dir: Path
) -> tuple[LettaProcessRuntime, LettaServer]:
    """The scratch copy's runtime and how to reach it. Whatever runs the real server, the copy
    runs as a process on this host, and always secured: with the real server's password, else
    a random one of its own (it holds every agent of the set, on a port any local user could
    reach)."""
    password = profile.server.password or SecretStr(secrets.token_urlsafe(24))
    runtime = LettaProcessRuntime.scratch_of(
        profile.runtime, f"{profile.name}-scratch", port, state_dir
    ).model_copy(update={"server_password": password, "open_server": False})
    server = profile.server.model_copy(update={"base_url": runtime.base_url, "password": password})
    return runtime, server


def export_via_scratch_copy(
    profile: ServerProfile,
    store: ObjectStore,
    manifest: BackupManifest,
    target_version: str,
    workdir: Path,
    renames: dict[str, dict[str, str]],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Export every agent of ``manifest``'s dump through a scratch ``target_version`` server.

    Returns agent id -> agent file path under ``workdir``. The scratch database and server are
    removed whatever happens.
    """
    database = profile.require_database()
    scratch = database.for_database(f"letta_ops_scratch_{uuid.uuid4().hex[:10]}").model_copy(
        update={"reset_mode": "recreate"}  # a new database: created, never reset in place
    )
    if manifest.db_schema:
        scratch = scratch.model_copy(update={"db_schema": manifest.db_schema})
    state_dir = Path(tempfile.mkdtemp(prefix="scratch-server-", dir=workdir))
    runtime, scratch_server = secured_scratch(profile, free_loopback_port(), state_dir)
    try:
        log(f"restoring {manifest.server}/{manifest.set_id} into {scratch.database_name}")
        restore_database_from_set(scratch, store, manifest)
        runtime.migrate(target_version, scratch, log=log)
        runtime.start(target_version, scratch, log=log)
        files: dict[str, str] = {}
        with LettaClient(scratch_server) as client:
            for agent_id, change in renames.items():
                client.update_agent(agent_id, {"name": change["new"]})
            for agent in client.list_agents():
                path = workdir / f"{agent['id']}.af"
                path.write_bytes(client.export_agent(agent["id"]))
                files[agent["id"]] = str(path)
        log(f"exported {len(files)} agent files from a scratch Letta {target_version}")
        return files
    finally:
        runtime.stop()
        drop_database(scratch)
