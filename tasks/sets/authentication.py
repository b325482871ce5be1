"""Authenticated catalog documents: a backup set counts only when the repository key vouches
for it.

Why: the bucket is not trusted. Whoever holds the backup role's ``PutObject`` can copy a set
under a new id, edit its manifest and verification records and write every object with a
valid store checksum; checksums prove integrity against accidents, not against a writer. So,
as restic does (no key, no repository), every manifest, verification (and drill) record and
pin record letta-ops writes carries an HMAC-SHA256 under a key that never enters the store,
and nothing in the catalog decides anything unless its MAC checks.

What the MAC covers: the document's canonical form (its JSON, keys sorted, no whitespace,
without the ``authentication`` field itself), the kind of document and its object key in the
store (``SERVER/SET_ID/manifest.json``). So a document cannot be edited, nor copied to another
set, server or name (a replayed verification record under a newer name fails), nor a manifest
used as a record. A manifest binds its server, set id, times, Letta version and every object's
key, size, sha256, store checksum and version id / ETag: the objects are held to it.

The keys: HKDF-SHA256 of each key of the encryption key ring (``LETTA_OPS_ENCRYPTION_KEY``...:
an encrypted repository needs nothing more), else of a signing key
(``LETTA_OPS_SIGNING_KEY``: a plaintext repository that must still not be forged), with an
info string of its own so a MAC key is never an encryption key. The MAC names the key id
(the master key's fingerprint), so sets written before a key rotation still authenticate with
the older key. A repository with neither (a local demo directory) is *keyless*: its documents
are read as they are, and letta-ops warns where that is a risk (an S3 store).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import Refused
from ..store.encryption import with_encryption
from ..store.encryption_keys import (
    HOW_TO_SUPPLY,
    KeyRing,
    MasterKey,
    load_key_ring,
    parse_key,
)
from ..store.objects import ObjectStore
from .manifest import stays_plaintext

SCHEME = "letta-ops/hmac-sha256@1"
AUTH_FIELD = "authentication"
SIGNING_KEY_ENV = "LETTA_OPS_SIGNING_KEY"
_MAC_KEY_INFO = b"letta-ops catalog authentication v1"
#: Catalog documents are small (a manifest of a thousand agents is a few hundred KB); a larger
#: object under a catalog name is refused before it is read into memory.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

DocumentKind = Literal["manifest", "verification", "pin"]
#: How far a document is believed: ``trusted`` (its MAC checks), ``keyless`` (the repository
#: has no key, so nothing can be checked: read as it is), ``legacy`` (no MAC: written before
#: sets were authenticated), ``untrusted`` (a MAC that fails, an unknown key, unreadable).
Trust = Literal["trusted", "keyless", "legacy", "untrusted"]


class UntrustedDocument(Refused):
    """A catalog document that fails authentication; the message names it and the check."""


@dataclass(frozen=True)
class CheckedDocument:
    """A catalog document as read, and how far it is believed (``reason`` says why not)."""

    body: dict[str, Any] | None
    trust: Trust
    reason: str | None = None
    #: The key id the document is authenticated with when that key is not configured: a key
    #: to supply rather than a forgery.
    missing_key_id: str | None = None

    @property
    def usable(self) -> bool:
        """Whether the document may decide anything without an explicit override."""
        return self.trust in ("trusted", "keyless") and self.body is not None


@dataclass(frozen=True)
class RepositoryKeys:
    """The MAC keys of a repository: ``current`` signs new documents, every key in ``keys``
    (by the id of the master key it comes from) checks old ones. Empty: a keyless repository.
    The keys never appear in a repr."""

    current: str | None = None
    keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, ring: KeyRing, signing: Iterable[MasterKey] = ()) -> RepositoryKeys:
        """MAC keys from the encryption key ring and any signing keys; the current encryption
        key signs, else the first signing key."""
        masters = {k.key_id: k for k in signing}
        masters.update(ring.keys)
        signing_ids = [k.key_id for k in signing]
        current = ring.current.key_id if ring.current else (signing_ids or [None])[0]
        return cls(current, {kid: _mac_key(master) for kid, master in masters.items()})

    def __bool__(self) -> bool:
        return bool(self.keys)

    def describe(self) -> str:
        return ", ".join(sorted(self.keys)) or "none"

    def seal(self, body: Mapping[str, Any], kind: DocumentKind, location: str) -> dict[str, Any]:
        """``body`` with its ``authentication`` field (unchanged when the repository is
        keyless)."""
        document = {k: v for k, v in body.items() if k != AUTH_FIELD}
        if self.current is None:
            return document
        mac = _mac(self.keys[self.current], kind, location, document)
        document[AUTH_FIELD] = {"scheme": SCHEME, "key_id": self.current, "mac": mac}
        return document

    def check(self, document: Any, kind: DocumentKind, location: str) -> CheckedDocument:
        """How far ``document`` (parsed JSON) stored at ``location`` is believed."""
        if not isinstance(document, dict):
            return CheckedDocument(None, "untrusted", f"{location} is not a JSON object")
        seal = document.get(AUTH_FIELD)
        body = {k: v for k, v in document.items() if k != AUTH_FIELD}
        if not self:
            return CheckedDocument(body, "keyless")
        if seal is None:
            return CheckedDocument(
                body,
                "legacy",
                f"{location} carries no authentication (written before sets "
                "were authenticated, or stripped)",
            )
        if not isinstance(seal, dict) or seal.get("scheme") != SCHEME:
            return CheckedDocument(body, "untrusted", f"{location} has an unknown authentication")
        key_id = str(seal.get("key_id"))
        key = self.keys.get(key_id)
        if key is None:
            return CheckedDocument(
                body,
                "untrusted",
                f"{location} is authenticated with key id {key_id}, which is not "
                f"configured (configured: {self.describe()}); supply that key with "
                f"{HOW_TO_SUPPLY} or {SIGNING_KEY_ENV}",
                missing_key_id=key_id,
            )
        expected = _mac(key, kind, location, body)
        if not hmac.compare_digest(expected, str(seal.get("mac"))):
            return CheckedDocument(
                body, "untrusted", f"{location} fails authentication (edited, copied or planted)"
            )
        return CheckedDocument(body, "trusted")


def _mac_key(master: MasterKey) -> bytes:
    return master.derive(_MAC_KEY_INFO)


def canonical_form(kind: DocumentKind, location: str, body: Mapping[str, Any]) -> bytes:
    """What the MAC covers: the scheme, the kind of document, where it is stored, and its
    JSON with sorted keys and no whitespace (the ``authentication`` field left out)."""
    text = json.dumps(
        {k: v for k, v in body.items() if k != AUTH_FIELD},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{SCHEME}\n{kind}\n{location}\n{text}".encode()


def _mac(key: bytes, kind: DocumentKind, location: str, body: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical_form(kind, location, body), hashlib.sha256).hexdigest()


def load_signing_keys(
    block_key: str | None = None, environ: Mapping[str, str] | None = None
) -> list[MasterKey]:
    """The signing key of a repository without encryption: the store block's
    ``signing_key``, else ``LETTA_OPS_SIGNING_KEY`` (a key from 'letta-ops backups new-key')."""
    env = os.environ if environ is None else environ
    if block_key and block_key.strip():
        return [parse_key(block_key, "The store block's signing_key")]
    inline = (env.get(SIGNING_KEY_ENV) or "").strip()
    return [parse_key(inline, SIGNING_KEY_ENV)] if inline else []


def open_repository(
    store: ObjectStore,
    encryption_key: str | None = None,
    previous_keys: str | None = None,
    signing_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ObjectStore:
    """``store`` as a repository: encrypting new sets and decrypting old ones with the key
    ring (a block's fields, else ``LETTA_OPS_ENCRYPTION_KEY``...), and holding the MAC keys
    that authenticate its catalog (from that ring, else the signing key). A set's manifest and
    catalog records stay plaintext (:func:`stays_plaintext`), so ``backups list``, ``prune``
    and a key-less ``verify`` need no key to read them."""
    ring = load_key_ring(encryption_key, previous_keys, environ)
    opened = with_encryption(store, ring, plaintext=stays_plaintext)
    opened.repository_keys = RepositoryKeys.of(ring, load_signing_keys(signing_key, environ))
    return opened


def parse_document(data: bytes, location: str) -> Any:
    """JSON of a catalog object; raises :class:`UntrustedDocument` for bytes that are not."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UntrustedDocument(
            f"{location} is {len(data)} bytes, more than a catalog document can be "
            f"({MAX_DOCUMENT_BYTES}); it is not read."
        )
    try:
        return json.loads(data)
    except ValueError:
        raise UntrustedDocument(f"{location} is not valid JSON; it is not read.") from None


def dumps_document(document: Mapping[str, Any]) -> bytes:
    """A catalog document as stored: indented JSON with sorted keys (the MAC does not
    depend on the layout, only on the content)."""
    return json.dumps(document, indent=2, sort_keys=True, default=str).encode()
