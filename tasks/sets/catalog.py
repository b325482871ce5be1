"""Reading backup sets back from the store: which exist, which are complete, which are believed.

A set is *complete* when its ``manifest.json`` exists (written last). What decides anything
about it is authenticated (:mod:`letta_ops.tasks.sets.authentication`): its manifest, its
verification records and its pin records each carry a MAC under the repository key. So:

* **trust**: ``trusted`` (the manifest's MAC checks), ``keyless`` (the repository has no key:
  read as it is), ``legacy`` (no MAC: written before sets were authenticated, usable only when
  named with ``--allow-legacy``), ``untrusted`` (a MAC that fails, a manifest that is unreadable
  or points outside its set, a record that fails authentication). Only trusted and keyless sets
  are ever chosen by default (``latest``, a rollback's or drill's target), and prune never
  deletes a legacy or untrusted set: it reports them as quarantined until an operator removes
  them with ``backups forget``.
* **verification**: the *newest* authenticated verification record decides: ``verified``, or
  ``failed`` when a later check failed (one passing record long ago no longer wins).
* **pins**: the newest authenticated pin record (``backups pin/unpin``), else the manifest's
  ``pinned`` / ``pinned_until``; a pin past its date no longer protects the set.

Records are new objects, never rewrites: the store is write-once.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..errors import Refused
from ..store.encryption_keys import EncryptionKeyMissing
from ..store.object_lock import ObjectRetention
from ..store.objects import ListedObject, ObjectStore, ReadPin
from .authentication import (
    MAX_DOCUMENT_BYTES,
    CheckedDocument,
    DocumentKind,
    RepositoryKeys,
    UntrustedDocument,
    dumps_document,
    parse_document,
)
from .manifest import (
    MANIFEST_NAME,
    PINS_DIR,
    VERIFY_DIR,
    BackupManifest,
    set_prefix,
)
from .retention import BackupSetSummary

#: A marker that pinned a set in older letta-ops (believed for keyless and legacy sets only).
PIN_MARKER = "pin.json"
#: The flag that lets a command use a set written before sets were authenticated.
ALLOW_LEGACY_FLAG = "--allow-legacy"


class BackupSetError(Refused):
    """A set that cannot be used; the message says which and why."""


class UntrustedSet(BackupSetError):
    """A set whose manifest does not authenticate (or is legacy and not allowed)."""


def repository_keys_of(store: ObjectStore) -> RepositoryKeys:
    """The MAC keys the store was opened with (empty: a keyless repository)."""
    keys = getattr(store, "repository_keys", None)
    return keys if isinstance(keys, RepositoryKeys) else RepositoryKeys()


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _write_document(store: ObjectStore, key: str, kind: DocumentKind, body: dict[str, Any]) -> str:
    sealed = repository_keys_of(store).seal(body, kind, key)
    store.put_bytes(key, dumps_document(sealed))
    return key


def read_document(
    store: ObjectStore, key: str, kind: DocumentKind, size: int | None = None
) -> CheckedDocument:
    """A catalog document and how far it is believed; a missing object raises
    ``FileNotFoundError``, anything unreadable is ``untrusted`` with the reason."""
    if size is None:
        size = store.metadata(key).size
    try:
        if size > MAX_DOCUMENT_BYTES:
            raise UntrustedDocument(
                f"{key} is {size} bytes, more than a catalog document can be; it is not read"
            )
        with store.open_read(key) as stream:
            data = stream.read(MAX_DOCUMENT_BYTES + 1)
        document = parse_document(data, key)
    except (UntrustedDocument, Refused) as exc:
        return CheckedDocument(None, "untrusted", str(exc).rstrip("."))
    return repository_keys_of(store).check(document, kind, key)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_manifest(store: ObjectStore, manifest: BackupManifest) -> str:
    """The set's commit marker, authenticated: written once, after every other object."""
    key = set_prefix(manifest.server, manifest.set_id) + MANIFEST_NAME
    return _write_document(store, key, "manifest", manifest.model_dump(mode="json"))


def record_verification(store: ObjectStore, prefix: str, result: dict) -> str:
    """Store a verification (or drill) result beside the set, as a new, authenticated
    object; the newest one decides the set's verification state."""
    return _write_document(store, f"{prefix}{VERIFY_DIR}/{_stamp()}.json", "verification", result)


def record_pin(
    store: ObjectStore, server: str, set_id: str, pinned: bool, until: datetime | None
) -> str:
    """Pin a set (until a date, or for good) or unpin it, as a new authenticated record."""
    body = {
        "pinned": pinned,
        "until": until.astimezone(UTC).isoformat() if until and pinned else None,
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    return _write_document(
        store, f"{set_prefix(server, set_id)}{PINS_DIR}/{_stamp()}.json", "pin", body
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestCheck:
    """A set's manifest as read and checked: the model when it parsed, and its trust."""

    manifest: BackupManifest | None
    document: CheckedDocument

    @property
    def trust(self) -> str:
        return self.document.trust

    @property
    def reason(self) -> str | None:
        return self.document.reason


def check_manifest(
    store: ObjectStore, server: str, set_id: str, size: int | None = None
) -> ManifestCheck:
    """Read and check a set's manifest: authenticated, a valid manifest, of this very set,
    naming only objects inside the set."""
    key = set_prefix(server, set_id) + MANIFEST_NAME
    document = read_document(store, key, "manifest", size)
    if document.body is None:
        return ManifestCheck(None, document)
    try:
        manifest = BackupManifest.model_validate(document.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the manifest"
        return ManifestCheck(
            None, CheckedDocument(None, "untrusted", f"{key} is not a valid manifest ({where})")
        )
    problem = None
    if (manifest.server, manifest.set_id) != (server, set_id):
        problem = (
            f"{key} names server {manifest.server!r} set {manifest.set_id!r}: it was copied "
            "from another set"
        )
    elif outside := manifest.objects_outside_set():
        problem = f"{key} points outside its set ({outside[0]})"
    if problem:
        return ManifestCheck(manifest, CheckedDocument(document.body, "untrusted", problem))
    return ManifestCheck(manifest, document)


@dataclass(frozen=True)
class _RecordState:
    verification: str = "unverified"
    pin: dict[str, Any] | None = None
    problem: str | None = None


def _newest_record(
    store: ObjectStore,
    listed: list[ListedObject],
    directory: str,
    kind: DocumentKind,
    set_trust: str,
) -> tuple[dict[str, Any] | None, str | None]:
    """The newest believable record in ``directory`` of a set, and the problem of a newer one
    that is not believable (a forged record is never skipped silently)."""
    records = sorted((o for o in listed if f"/{directory}/" in o.key), key=lambda o: o.key)
    for obj in reversed(records):
        try:
            checked = read_document(store, obj.key, kind, obj.size)
        except FileNotFoundError:  # deleted since the listing (a prune of a copy of it)
            continue
        believed = checked.usable or (checked.trust == "legacy" and set_trust == "legacy")
        if not believed:
            return None, checked.reason
        return checked.body, None
    return None, None


def _records(store: ObjectStore, listed: list[ListedObject], set_trust: str) -> _RecordState:
    verification, problem = _newest_record(store, listed, VERIFY_DIR, "verification", set_trust)
    pin, pin_problem = _newest_record(store, listed, PINS_DIR, "pin", set_trust)
    state = (
        "unverified"
        if verification is None
        else ("verified" if verification.get("ok") is True else "failed")
    )
    return _RecordState(state, pin, problem or pin_problem)


def _pin_of(
    manifest: BackupManifest, pin: dict[str, Any] | None, marker: bool, trust: str
) -> tuple[bool, datetime | None]:
    """Whether the set is pinned now, and until when (None: for good)."""
    if pin is not None:
        pinned = pin.get("pinned") is True
        until = _parse_time(pin.get("until")) if pinned else None
    else:
        pinned, until = manifest.pinned, manifest.pinned_until if manifest.pinned else None
    if not pinned and marker and trust in ("keyless", "legacy"):
        pinned, until = True, None
    if pinned and until is not None and until <= datetime.now(UTC):
        return False, until
    return pinned, until


def _parse_time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_backup_sets(store: ObjectStore, server: str | None = None) -> list[BackupSetSummary]:
    """Every set in the store (of one server if given), newest first by manifest time."""
    groups: dict[tuple[str, str], list[ListedObject]] = defaultdict(list)
    for obj in store.list(f"{server}/" if server else ""):
        parts = obj.key.split("/")
        if len(parts) < 3:
            continue
        groups[(parts[0], parts[1])].append(obj)
    summaries = [_summary(store, srv, set_id, objects) for (srv, set_id), objects in groups.items()]
    return sorted(summaries, key=lambda s: s.created_at or s.last_modified, reverse=True)


def sets_newest_first(store: ObjectStore, server: str) -> Iterator[BackupSetSummary]:
    """The sets of one server as :func:`list_backup_sets` summarizes them, but lazily: one
    listing, then each set read only when the caller reaches it, in the order of their ids.
    A set id begins with the UTC second the set was taken (its manifest's ``created_at``,
    both authenticated), so for every set the catalog believes this is newest first; a caller
    that wants the newest set that fits stops reading there (a store of hundreds of sets is
    not read whole before each backup)."""
    groups: dict[str, list[ListedObject]] = defaultdict(list)
    for obj in store.list(f"{server}/"):
        parts = obj.key.split("/")
        if len(parts) >= 3:
            groups[parts[1]].append(obj)
    for set_id in sorted(groups, reverse=True):
        yield _summary(store, server, set_id, groups[set_id])


def _summary(
    store: ObjectStore, server: str, set_id: str, objects: list[ListedObject]
) -> BackupSetSummary:
    prefix = f"{server}/{set_id}/"
    sizes = {o.key[len(prefix) :]: o.size for o in objects}
    common = {
        "server": server,
        "set_id": set_id,
        "prefix": prefix,
        "last_modified": max(o.last_modified for o in objects),
        "size": sum(o.size for o in objects),
    }
    incomplete = {"created_at": None, "complete": False, "verified": False, "purpose": None}
    if MANIFEST_NAME not in sizes:
        return BackupSetSummary(**common, **incomplete, pinned=PIN_MARKER in sizes)
    try:
        checked = check_manifest(store, server, set_id, sizes[MANIFEST_NAME])
    except FileNotFoundError:  # deleted since the listing: what is left is incomplete
        return BackupSetSummary(**common, **incomplete, pinned=False)
    except Refused as exc:  # a set id that is not one: never ours
        checked = ManifestCheck(None, CheckedDocument(None, "untrusted", str(exc).rstrip(".")))
    manifest = checked.manifest
    trust, reason = checked.trust, checked.reason
    if manifest is None:  # a manifest object that is not a manifest: quarantined, never pruned
        return BackupSetSummary(
            **common, **incomplete, pinned=False, trust="untrusted", trust_reason=reason
        )
    records = _records(store, objects, trust)
    if records.problem and trust in ("trusted", "keyless"):
        trust, reason = "untrusted", records.problem
    pinned, until = _pin_of(manifest, records.pin, PIN_MARKER in sizes, trust)
    return BackupSetSummary(
        **common,
        created_at=manifest.created_at,
        complete=True,
        verified=records.verification == "verified" and trust in ("trusted", "keyless"),
        pinned=pinned,
        purpose=manifest.purpose,
        lock=ObjectRetention(
            mode=manifest.object_lock.mode, retain_until=manifest.object_lock.retain_until
        )
        if manifest.object_lock
        else None,
        trust=trust,
        trust_reason=reason,
        verification=records.verification,
        pinned_until=until,
        letta_version=manifest.letta_version,
    )


def summarize_set(store: ObjectStore, summary: BackupSetSummary) -> BackupSetSummary | None:
    """The set read again from the store (None: gone): prune's check just before a delete."""
    objects = list(store.list(summary.prefix))
    return _summary(store, summary.server, summary.set_id, objects) if objects else None


def load_manifest(
    store: ObjectStore, server: str, set_id: str, allow_legacy: bool = False
) -> BackupManifest:
    """The manifest of a complete set, once it authenticates; refuses incomplete sets, other
    servers' sets, untrusted sets and (unless ``allow_legacy``) sets written before sets were
    authenticated. Every later read of the set's objects through ``store`` is pinned to the
    ETag / version the manifest recorded, and a plaintext object of an encrypted set is
    refused."""
    prefix = set_prefix(server, set_id)
    if not store.exists(prefix + MANIFEST_NAME):
        raise BackupSetError(
            f"Backup set {server}/{set_id} has no manifest in {store.describe()}: it is "
            "incomplete (or does not exist) and cannot be used; pick one from "
            "'letta-ops backups list'."
        )
    checked = check_manifest(store, server, set_id)
    if checked.trust == "legacy" and not allow_legacy:
        raise UntrustedSet(
            f"Backup set {server}/{set_id} is not authenticated ({checked.reason}); if you "
            f"know it was written by letta-ops before sets were authenticated, name it with "
            f"{ALLOW_LEGACY_FLAG}."
        )
    if checked.document.missing_key_id is not None:
        raise EncryptionKeyMissing(
            f"Backup set {server}/{set_id} cannot be used: {checked.reason}."
        )
    if checked.manifest is None or checked.trust == "untrusted":
        raise UntrustedSet(
            f"Backup set {server}/{set_id} is not trusted and will not be used: {checked.reason}."
        )
    manifest = checked.manifest
    store.pin_reads(
        {k: ReadPin(etag=o.etag, version_id=o.version_id) for k, o in manifest.objects.items()}
    )
    expect_encrypted = getattr(store, "expect_encrypted", None)
    if manifest.encryption is not None and expect_encrypted is not None:
        expect_encrypted(manifest.objects)
    return manifest


def forget_quarantined_set(
    store: ObjectStore, server: str, set_id: str, execute: bool = False
) -> dict[str, Any]:
    """Delete a set retention keeps because it cannot be believed (legacy or untrusted);
    refuse a believed set (retention decides about those). Without ``execute``, the plan."""
    prefix = set_prefix(server, set_id)
    objects = list(store.list(prefix))
    if not objects:
        raise BackupSetError(f"There is no backup set {server}/{set_id} in {store.describe()}.")
    summary = _summary(store, server, set_id, objects)
    if not summary.quarantined:
        raise BackupSetError(
            f"Backup set {server}/{set_id} is {summary.trust}, not quarantined; 'letta-ops "
            "prune' deletes believed sets by the retention policy."
        )
    if execute:
        store.delete_prefix(prefix)
    return {
        "set": f"{server}/{set_id}",
        "trust": summary.trust,
        "reason": summary.trust_reason,
        "objects": len(objects),
        "executed": execute,
    }


def keyless_warning(store: ObjectStore) -> str | None:
    """Why a keyless S3 repository is a risk, in one sentence; None when it has a key or is a
    local directory (the demo's)."""
    if repository_keys_of(store) or not store.describe().startswith("s3://"):
        return None
    return (
        f"{store.describe()} has no repository key, so its backup sets cannot be "
        "authenticated: whoever can write to the bucket could plant one that letta-ops would "
        "restore; make a key with 'letta-ops backups new-key' and set LETTA_OPS_ENCRYPTION_KEY "
        "(or LETTA_OPS_SIGNING_KEY to authenticate without encrypting)"
    )


def runtime_files_of_set(store: ObjectStore, manifest: BackupManifest) -> dict[str, bytes]:
    """The runtime's files kept in a set (a compose file), by name, checked against the
    manifest's sha256 before anyone writes them back."""
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
