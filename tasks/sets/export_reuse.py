"""Agent files reused from the previous verified set, as restic reuses an unchanged file.

Why (issue #32): the exports through Letta's API are a backup's long pole on long histories
(one export in flight to keep the live server's latency within 2x, 1-1.5 s per agent). An
agent whose rows are unchanged since the previous set (its fingerprint,
``tasks/postgres/agent_fingerprints.py``) would export to the same file: the file is copied
from that set instead, and the live server is not asked.

What is trusted: only a *parent* the catalog believes (``tasks/sets/catalog.py``): the newest
set of the same server in the same store whose manifest authenticates under the repository key
(or a keyless repository, where nothing is authenticated and the catalog reads every set as
it is), whose newest authenticated verification passed, of the same Letta version and alembic
revision, on PostgreSQL. A set planted in the bucket, a forged or stripped manifest (legacy),
a set that failed verification is never a parent. The file's bytes are read pinned to the
ETag the parent's manifest recorded, decrypted as the store decrypts, and must have the size
and sha256 that manifest records; then they are written under the new set's own name (and
encrypted again under the current key), and the new manifest records them like any export,
with ``reused_from``. Anything failing in a reuse falls back to a fresh export of that agent.

``--full-exports`` (``LETTA_OPS_FULL_EXPORTS=1``) exports every agent again; the fingerprints
are still recorded, so the next backup can reuse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import Refused
from ..store.objects import ObjectStore, StoredObject
from .catalog import load_manifest, sets_newest_first
from .manifest import AgentEntry, BackupManifest, agent_file_key

FULL_EXPORTS_ENV = "LETTA_OPS_FULL_EXPORTS"


class ReuseFailed(Refused):
    """A parent's agent file that cannot be reused (missing, changed, unreadable)."""


def full_exports_chosen(requested: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """``--full-exports`` wins, else ``LETTA_OPS_FULL_EXPORTS`` (1/true/yes/on)."""
    if requested is not None:
        return requested
    value = ((os.environ if environ is None else environ).get(FULL_EXPORTS_ENV) or "").strip()
    return value.lower() in ("1", "true", "yes", "on")


def parent_set(
    store: ObjectStore, server: str, letta_version: str | None, alembic_revision: str | None
) -> BackupManifest | None:
    """The newest believed, verified PostgreSQL set of ``server`` at this version and
    revision, its manifest authenticated again and the reads of its objects pinned; None when
    there is none. Sets are read newest first and no further than the first that fits."""
    if not letta_version:
        return None
    for summary in sets_newest_first(store, server):
        if not (
            summary.complete
            and summary.believed
            and summary.verified
            and summary.verification == "verified"
            and summary.letta_version == letta_version
        ):
            continue
        try:
            manifest = load_manifest(store, server, summary.set_id)
        except Refused:  # changed since it was listed, or a key not configured
            continue
        if manifest.engine == "postgresql" and manifest.alembic_revision == alembic_revision:
            return manifest
    return None


@dataclass(frozen=True)
class ReusePlan:
    """The run's fingerprints (before any export) and the parent whose files may be reused."""

    fingerprints: Mapping[str, str] = field(default_factory=dict)
    parent: BackupManifest | None = None
    #: How long the fingerprints took (they run beside the dump).
    seconds: float = 0.0

    def describe(self, agent_ids: list[str], full_exports: bool) -> str:
        """One line for the run's log: how many were fingerprinted, how many are reusable."""
        found = f"{len(self.fingerprints)} agents fingerprinted in {self.seconds:.2f} s"
        if self.parent is not None:
            reusable = sum(self.reusable(i) is not None for i in agent_ids)
            return f"{found}; {reusable} unchanged since set {self.parent.set_id}"
        why = "--full-exports: every agent exported" if full_exports else "no parent set"
        return f"{found}; {why}"

    def reusable(self, agent_id: str) -> AgentEntry | None:
        """The parent's entry of an agent whose fingerprint is unchanged and whose file the
        parent holds; None: export it."""
        fingerprint = self.fingerprints.get(agent_id)
        entry = self._parent_entries.get(agent_id)
        if self.parent is None or fingerprint is None or entry is None or entry.file is None:
            return None
        same = entry.fingerprint == fingerprint and entry.file in self.parent.objects
        return entry if same else None

    @cached_property
    def _parent_entries(self) -> dict[str, AgentEntry]:
        return {a.id: a for a in self.parent.agents} if self.parent else {}


def reuse_agent_file(
    store: ObjectStore, parent: BackupManifest, entry: AgentEntry, prefix: str
) -> StoredObject:
    """Copy a parent's agent file into the set at ``prefix`` once its bytes match the
    parent's manifest; raises :class:`ReuseFailed` (or the store's error) otherwise."""
    assert entry.file is not None
    recorded = parent.objects[entry.file]
    data = store.read_bytes(entry.file)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != recorded.size or digest != recorded.sha256:
        raise ReuseFailed(
            f"{entry.file} does not match the sha256 its set's manifest records (read "
            f"{len(data)} bytes, sha256 {digest[:12]}...)"
        )
    return store.put_bytes(agent_file_key(prefix, entry.id), data)
