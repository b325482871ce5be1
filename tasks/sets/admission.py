"""Which backup sets a rollback or restore may use, decided before anything is stopped.

Why a gate of its own: a rollback drops the live database. Everything that can be known about
the set beforehand — it is complete (has a manifest), every object still matches its sha256,
it was taken of this very server, its Letta version can be installed — is checked here first,
and a refusal is one sentence that names the set and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..store.encryption import key_ring_of
from ..store.encryption_keys import HOW_TO_SUPPLY, EncryptionKeyMissing
from ..store.objects import ObjectStore
from .catalog import BackupSetError, list_backup_sets
from .manifest import BackupManifest
from .retention import BackupSetSummary
from .verification import check_objects


class BackupSetRefused(BackupSetError):
    """The set exists but must not be restored; the message says which and why."""


def newest_rollback_set(store: ObjectStore, server: str) -> BackupSetSummary:
    """The default rollback target: the newest verified pre-upgrade set of ``server``."""
    for summary in list_backup_sets(store, server):
        if summary.complete and summary.verified and summary.purpose == "pre-upgrade":
            return summary
    raise BackupSetRefused(
        f"There is no verified pre-upgrade backup set of server {server!r} in "
        f"{store.describe()}; name one with --to SET (see 'letta-ops backups list')."
    )


def require_same_server(manifest: BackupManifest, server: str) -> None:
    """A rollback puts a server back on *its own* data, never on another server's."""
    if manifest.server != server:
        raise BackupSetRefused(
            f"Backup set {manifest.server}/{manifest.set_id} was taken of server "
            f"{manifest.server!r}, not {server!r}; a rollback only restores a server's own "
            "sets (use 'letta-ops restore' to put it on another database)."
        )


def missing_key(store: ObjectStore, manifest: BackupManifest) -> str | None:
    """Why the set cannot be decrypted with the store's keys, as one sentence; None when it
    can (or is not encrypted)."""
    encryption = manifest.encryption
    ring = key_ring_of(store)
    if encryption is None or ring.get(encryption.key_id) is not None:
        return None
    have = (
        f"none of the configured keys ({ring.describe()}) is that key"
        if ring
        else "no encryption key is configured"
    )
    return (
        f"Backup set {manifest.server}/{manifest.set_id} is encrypted with key id "
        f"{encryption.key_id} and {have}; supply that key with {HOW_TO_SUPPLY}."
    )


def require_key(store: ObjectStore, manifest: BackupManifest) -> None:
    """Refuse, before anything is stopped or downloaded, a set whose key is not configured."""
    problem = missing_key(store, manifest)
    if problem:
        raise EncryptionKeyMissing(problem)


def require_intact(
    store: ObjectStore, manifest: BackupManifest, keys: Iterable[str] | None = None
) -> int:
    """Check the set's objects (or only ``keys``) as ``verify`` does -- the store's recorded
    checksum where there is one, else re-read -- and refuse on any size or checksum mismatch,
    or when the set is encrypted with a key that is not configured. The restore itself still
    decrypts (authenticating every frame) and compares the dump's sha256 with the manifest.

    Returns how many objects were checked.
    """
    require_key(store, manifest)
    wanted = set(manifest.objects) if keys is None else set(keys)
    unknown = sorted(wanted - set(manifest.objects))
    if unknown:
        raise BackupSetRefused(
            f"Backup set {manifest.server}/{manifest.set_id} does not list {unknown[0]} in its "
            "manifest; the set is damaged and will not be restored."
        )
    subset = manifest.model_copy(
        update={"objects": {k: v for k, v in manifest.objects.items() if k in wanted}}
    )
    problems = check_objects(store, subset)
    if problems:
        named = "; ".join(f"{p['object']}: {p['problem']}" for p in problems)
        raise BackupSetRefused(
            f"Backup set {manifest.server}/{manifest.set_id} fails its checksums ({named}); "
            "it was damaged or tampered with in storage and will not be restored."
        )
    return len(subset.objects)


def require_dump(manifest: BackupManifest, engine: str = "postgresql") -> None:
    """A set whose manifest lists no dump cannot restore a database; a set goes only onto a
    database of its own engine (``engine``: what the caller restores onto)."""
    label = f"{manifest.server}/{manifest.set_id}"
    if manifest.engine != engine:
        where = (
            f"`letta-ops restore {label} --sqlite HOME/.letta/sqlite.db`, or back under its own "
            f"server with `letta-ops rollback --to {label}`"
            if manifest.engine == "sqlite"
            else f"`letta-ops restore {label} --database URI_OR_BLOCK`"
        )
        raise BackupSetRefused(
            f"Backup set {label} holds a {manifest.engine} database and this target is "
            f"{engine}; a {manifest.engine} set goes onto a {manifest.engine} database: {where}."
        )
    if manifest.dump not in manifest.objects:
        raise BackupSetRefused(
            f"Backup set {label} lists no database dump in its "
            "manifest; it cannot restore a database."
        )
