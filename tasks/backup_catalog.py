"""Reading backup sets back from the store: which exist, which are complete and verified.

A set is *complete* when its ``manifest.json`` exists (written last), *verified* when a passing
verification record sits beside it, *pinned* when its manifest says so or a ``pin.json``
marker was added later. Records are new objects, never rewrites: the store is write-once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime

from letta_ops.tasks.backup_manifest import MANIFEST_NAME, VERIFY_DIR, BackupManifest, set_prefix
from letta_ops.tasks.backup_retention import BackupSetSummary
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.object_store import ObjectRetention, ObjectStore

PIN_MARKER = "pin.json"


class BackupSetError(Refused):
    """A set that cannot be used; the message says which and why."""


def list_backup_sets(store: ObjectStore, server: str | None = None) -> list[BackupSetSummary]:
    """Every set in the store (of one server if given), newest first by manifest time."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for obj in store.list(f"{server}/" if server else ""):
        parts = obj.key.split("/")
        if len(parts) < 3:
            continue
        groups[(parts[0], parts[1])].append(obj)
    summaries = []
    for (srv, set_id), objects in groups.items():
        prefix = f"{srv}/{set_id}/"
        names = {o.key[len(prefix) :] for o in objects}
        manifest = None
        if MANIFEST_NAME in names:
            try:
                manifest = BackupManifest.from_json(store.read_bytes(prefix + MANIFEST_NAME))
            except ValueError:
                manifest = None
        verified = (
            any(n.startswith(f"{VERIFY_DIR}/") and _passed(store, prefix + n) for n in names)
            if manifest
            else False
        )
        summaries.append(
            BackupSetSummary(
                server=srv,
                set_id=set_id,
                prefix=prefix,
                created_at=manifest.created_at if manifest else None,
                complete=manifest is not None,
                verified=verified,
                pinned=bool(manifest and manifest.pinned) or PIN_MARKER in names,
                purpose=manifest.purpose if manifest else None,
                last_modified=max(o.last_modified for o in objects),
                size=sum(o.size for o in objects),
                lock=ObjectRetention(
                    mode=manifest.object_lock.mode, retain_until=manifest.object_lock.retain_until
                )
                if manifest and manifest.object_lock
                else None,
            )
        )
    return sorted(summaries, key=lambda s: s.created_at or s.last_modified, reverse=True)


def _passed(store: ObjectStore, key: str) -> bool:
    try:
        return bool(json.loads(store.read_bytes(key)).get("ok"))
    except (ValueError, FileNotFoundError):
        return False


def load_manifest(store: ObjectStore, server: str, set_id: str) -> BackupManifest:
    """The manifest of a complete set; refuses incomplete sets and other servers' sets."""
    prefix = set_prefix(server, set_id)
    if not store.exists(prefix + MANIFEST_NAME):
        raise BackupSetError(
            f"Backup set {server}/{set_id} has no manifest in {store.describe()}: it is "
            "incomplete (or does not exist) and cannot be used; pick one from "
            "'letta-ops backups list'."
        )
    manifest = BackupManifest.from_json(store.read_bytes(prefix + MANIFEST_NAME))
    if manifest.server != server or manifest.set_id != set_id:
        raise BackupSetError(
            f"The manifest at {prefix} names server {manifest.server!r} set "
            f"{manifest.set_id!r}, not {server!r} {set_id!r}; it was moved or tampered with."
        )
    return manifest


def record_verification(store: ObjectStore, prefix: str, result: dict) -> str:
    """Store a verification result beside the set, as a new object."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{prefix}{VERIFY_DIR}/{stamp}.json"
    store.put_bytes(key, json.dumps(result, indent=2, sort_keys=True, default=str).encode())
    return key


def runtime_files_of_set(store: ObjectStore, manifest: BackupManifest) -> dict[str, bytes]:
    """The runtime's files kept in a set (a compose file), by name, checked against the
    manifest's sha256 before anyone writes them back."""
    import hashlib

    files: dict[str, bytes] = {}
    for name, key in manifest.runtime_files.items():
        data = store.read_bytes(key)
        if hashlib.sha256(data).hexdigest() != manifest.objects[key].sha256:
            raise ValueError(
                f"{key} in set {manifest.server}/{manifest.set_id} does not match its manifest "
                "checksum; it is not written back (run 'letta-ops verify' on the set)."
            )
        files[name] = data
    return files
