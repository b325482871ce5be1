"""Backup sets: where their objects go, and the manifest that commits them.

Rules (DESIGN.md, "Backup sets"): one set per run under
``<server>/<UTC timestamp>-<run id>/`` (relative to the store's prefix); agent files named by
agent *id* (names hold ``/``); the pg_dump; and ``manifest.json`` written *last* as the commit
marker. A set without a manifest is incomplete and is never offered for restore. Nothing is
ever overwritten: verification results are new objects beside the manifest.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ..errors import Refused
from ..server_naming import sanitize_server_name
from ..store.objects import StoreChecksum, StoredObject

MANIFEST_FORMAT = "letta-ops/backup-set@1"
MANIFEST_NAME = "manifest.json"
DUMP_NAME = "database.dump"
#: A SQLite server's set holds its database as a copy made by SQLite's online backup API.
SQLITE_COPY_NAME = "database.sqlite"
AGENTS_DIR = "agents"
VERIFY_DIR = "verifications"
PINS_DIR = "pins"

#: A Letta release as letta-ops names it wherever a version reaches a command or a path.
RELEASE_VERSION = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}$")
_SET_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-z]{4,36}$")
_AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

Purpose = Literal[
    "scheduled",
    "manual",
    "pre-upgrade",
    "pre-rollback",
    "pre-cleanup",
    "pre-rename",
    "safety",
    "adopted",  # a pg_dump made by hand, adopted with `backups adopt`
]


class ManifestObject(BaseModel):
    size: int = Field(description="Bytes of the object's content (the plaintext if encrypted).")
    sha256: str = Field(
        description="sha256 hex digest of the content (the plaintext if encrypted): what a "
        "restore compares after downloading."
    )
    store_checksum: StoreChecksum | None = Field(
        default=None,
        description="The checksum the store computed and keeps with the object (S3: SHA256, "
        "FULL_OBJECT for a single upload, COMPOSITE for a multipart one): verification "
        "compares it with one metadata request. None (a local directory, a store that keeps "
        "none, sets written before it was recorded): verification re-reads the object.",
    )
    stored_size: int | None = Field(
        default=None,
        description="Bytes stored when the object is encrypted (header, frames and tags); "
        "None: stored as it is (size).",
    )
    stored_sha256: str | None = Field(
        default=None,
        description="sha256 of the stored ciphertext when the object is encrypted: "
        "verification without the key compares it; None: stored as it is (sha256).",
    )
    etag: str | None = Field(
        default=None,
        description="The store's ETag of the object as written: every later read is pinned "
        "to it (If-Match), so an object rewritten after the set was written is refused, "
        "never read. None: a store without ETags (a directory) or an older set.",
    )
    version_id: str | None = Field(
        default=None,
        description="The store's version id of the object as written (versioned buckets): "
        "later reads ask for exactly that version.",
    )

    @classmethod
    def of(cls, stored: StoredObject) -> ManifestObject:
        """The manifest's entry for what a store reported writing (encrypted objects carry
        their ciphertext's size and digest too)."""
        return cls(
            size=stored.size,
            sha256=stored.sha256,
            store_checksum=stored.store_checksum,
            stored_size=getattr(stored, "stored_size", None),
            stored_sha256=getattr(stored, "stored_sha256", None),
            etag=stored.etag,
            version_id=stored.version_id,
        )

    @property
    def stored_bytes(self) -> int:
        """What the store holds for this object, in bytes (verification compares it)."""
        return self.size if self.stored_size is None else self.stored_size

    @property
    def stored_digest(self) -> str:
        """The sha256 of what the store holds (verification compares it)."""
        return self.sha256 if self.stored_sha256 is None else self.stored_sha256


class SetEncryption(BaseModel):
    """How a set's objects were encrypted on the client: enough to name the key a restore
    needs, never the key. Unrelated to ``encryption_key_configured`` (Letta's own key)."""

    scheme: str = Field(
        description="Format of the encrypted objects, e.g. "
        "letta-ops/aes-256-gcm-stream@1 (tasks/store/encryption.py)."
    )
    key_id: str = Field(description="Fingerprint of the master key (HKDF of it, one-way).")


class ManifestLock(BaseModel):
    """The S3 Object Lock every object of the set was written with (the manifest included)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        description="GOVERNANCE (a principal allowed s3:BypassGovernanceRetention can lift "
        "it) or COMPLIANCE (nobody can, until it ends)."
    )
    days: float = Field(description="The retention asked for (--lock-days).")
    retain_until: datetime = Field(
        description="When the lock of the set's objects ends: until then S3 refuses to "
        "delete them and prune keeps the set. Records added later (verifications, audit) "
        "may carry a later date of their own; prune reads the store before deleting."
    )


class AgentEntry(BaseModel):
    id: str
    name: str
    file: str | None = Field(
        default=None, description="Key of the agent file; None if the export failed."
    )
    error: str | None = Field(default=None, description="The server's error when it failed.")
    fingerprint: str | None = Field(
        default=None,
        description="sha256 of the agent's rows in PostgreSQL, taken before its file was "
        "exported or reused (tasks/postgres/agent_fingerprints.py): the next backup reuses "
        "the file when it is unchanged. None: a SQLite server, a set written before, or the "
        "fingerprint could not be taken.",
    )
    reused_from: str | None = Field(
        default=None,
        description="The set id (same server) whose agent file was copied here, its bytes "
        "checked against that set's manifest, instead of a new export; None: exported.",
    )


class BackupManifest(BaseModel):
    """Everything needed to trust and restore a backup set, and no secret."""

    format: str = MANIFEST_FORMAT
    set_id: str
    server: str
    created_at: datetime
    completed_at: datetime
    flow_run_id: str | None = None
    purpose: Purpose = "manual"
    pinned: bool = Field(default=False, description="Retention never deletes a pinned set.")
    pinned_until: datetime | None = Field(
        default=None,
        description="When the pin ends (then retention treats the set like any other); "
        "None: pinned for good (when pinned). Later 'backups pin/unpin' records override it.",
    )
    letta_version: str
    alembic_revision: str | None
    base_url: str
    engine: Literal["postgresql", "sqlite"] = Field(
        default="postgresql",
        description="The server's database: PostgreSQL (the set holds a pg_dump) or SQLite "
        "(the set holds a copy of HOME/.letta/sqlite.db made by SQLite's online backup API).",
    )
    database_name: str
    db_schema: str
    postgres_version: str | None = Field(
        default=None, description="The PostgreSQL server's version; None on SQLite."
    )
    sqlite_version: str | None = Field(
        default=None, description="The SQLite library that made the copy; None on PostgreSQL."
    )
    pgvector_version: str | None
    pgvector_schema: str | None = Field(
        default=None,
        description="The schema pgvector was created in (extensions on Supabase): a new "
        "database for this set gets it there. None: public, or a set written before.",
    )
    left_out: list[str] = Field(
        default_factory=list,
        description="What the database held that is not Letta's and the dump leaves out "
        "(the operator's tables in Letta's schema, other schemas), as plans name them.",
    )
    encryption_key_configured: bool | None = Field(
        default=None, description="Whether LETTA_ENCRYPTION_KEY was set (never the key)."
    )
    encryption: SetEncryption | None = Field(
        default=None,
        description="Client-side encryption of every object but the manifest and the catalog "
        "records (verifications, audit, journal): scheme and key id. None: stored as written.",
    )
    row_counts: dict[str, int] = Field(description="Per-table counts in the dump's snapshot.")
    table_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="Per-table size on disk when the dump began (pg_table_size: rows and "
        "TOAST, no indexes): how a restore spreads the tables over its lanes. Empty in sets "
        "written before; the row counts stand in.",
    )
    dump: str = Field(
        description="Key of the pg_dump (custom format), or of the SQLite copy (engine sqlite)."
    )
    dump_compression: str | None = Field(
        default=None, description="pg_dump's --compress (e.g. gzip:6, zstd:3, none)."
    )
    agents: list[AgentEntry]
    objects: dict[str, ManifestObject] = Field(description="Every object but the manifest.")
    tool_versions: dict[str, str] = Field(default_factory=dict)
    runtime: str | None = Field(
        default=None, description="How the server was run when the set was taken (describe())."
    )
    runtime_files: dict[str, str] = Field(
        default_factory=dict,
        description="Files the runtime changes on a start (a compose file), by name -> object "
        "key in this set; a rollback to the set puts them back.",
    )
    object_lock: ManifestLock | None = Field(
        default=None, description="The set's S3 Object Lock retention; None: not locked."
    )

    @field_validator("letta_version")
    @classmethod
    def _version_is_a_release(cls, value: str) -> str:
        # The version reaches command templates ({version}) and image tags: digits only.
        if not RELEASE_VERSION.match(value):
            raise ValueError(f"letta_version {value[:40]!r} is not a release (X.Y.Z)")
        return value

    def objects_outside_set(self) -> list[str]:
        """Object keys the manifest names that do not lie under its own set's prefix (a
        manifest may only ever point into its own set)."""
        prefix = set_prefix(self.server, self.set_id)
        named = [
            *self.objects,
            self.dump,
            *(a.file for a in self.agents if a.file),
            *self.runtime_files.values(),
        ]
        return sorted({k for k in named if not k.startswith(prefix) or ".." in k.split("/")})

    @property
    def failed_agents(self) -> list[AgentEntry]:
        return [a for a in self.agents if a.file is None]

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BackupManifest:
        return cls.model_validate_json(data)


#: Entries of a set that stay plaintext when the set is encrypted: the manifest (so `backups
#: list`, `prune` and a key-less verify can read it) and the catalog records beside it, which
#: hold only what the manifest already says (verification results, redacted audit records,
#: the run journal's steps); ``pin.json`` is a marker. Names kept in step with
#: ``tasks/audit/store.py`` (SET_AUDIT_DIR, STORE_AUDIT_DIR) and ``tasks/runs/journal.py``.
PLAINTEXT_FILES = frozenset({MANIFEST_NAME, "pin.json"})
PLAINTEXT_DIRS = frozenset({VERIFY_DIR, PINS_DIR, "audit", "journal"})
STORE_AUDIT_DIR = "audit"


def stays_plaintext(key: str) -> bool:
    """Whether an object of the store stays plaintext under client-side encryption: the
    catalog entries of a set (``SERVER/SET_ID/...``, see :data:`PLAINTEXT_FILES`) and the
    store's own audit records (``audit/NAME.json``). Everything else is encrypted, so an
    object nobody listed here is never left readable."""
    parts = key.split("/")
    if len(parts) == 2:
        return parts[0] == STORE_AUDIT_DIR
    if len(parts) < 3:
        return False
    inside = parts[2:]
    if len(inside) == 1:
        return inside[0] in PLAINTEXT_FILES
    return inside[0] in PLAINTEXT_DIRS


def new_set_id(now: datetime | None = None, run_id: str = "") -> str:
    """``20261123T021500Z-1a2b3c4d``: sortable by time, unique by run."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    suffix = re.sub(r"[^0-9a-z]", "", run_id.lower())[:8] or _random_suffix()
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def _random_suffix() -> str:
    import secrets

    return secrets.token_hex(4)


def set_prefix(server: str, set_id: str) -> str:
    if not _SET_ID.match(set_id):
        raise Refused(
            f"{set_id!r} is not a backup set id; ids look like 20261123T021500Z-1a2b3c4d "
            "(see 'letta-ops backups list')."
        )
    return f"{sanitize_server_name(server)}/{set_id}/"


def agent_file_key(prefix: str, agent_id: str) -> str:
    """Agent files are named by id: ids are safe path segments, names are not."""
    if not _AGENT_ID.match(agent_id):
        raise ValueError(f"Agent id {agent_id!r} is not a safe object name.")
    return f"{prefix}{AGENTS_DIR}/{agent_id}.af"


def parse_set_reference(reference: str, default_server: str | None = None) -> tuple[str, str]:
    """``SERVER/SET_ID`` or a bare ``SET_ID`` (with the current server) -> (server, set_id)."""
    ref = reference.strip().strip("/")
    if "/" in ref:
        server, _, set_id = ref.rpartition("/")
    else:
        server, set_id = default_server or "", ref
    if not server:
        raise Refused(f"Backup set {reference!r} names no server; use SERVER/SET_ID.")
    set_prefix(server, set_id)  # validates
    return sanitize_server_name(server), set_id
