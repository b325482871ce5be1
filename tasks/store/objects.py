"""One interface over S3-compatible storage and a local directory, for write-once backup sets.

Why this exists: a backup set is only trustworthy if nothing in it can be half-written or
silently replaced. Both stores therefore share three promises:

* **write once** -- putting a key that already exists raises :class:`ObjectExistsError` and
  leaves the first content untouched;
* **all or nothing** -- an object becomes visible only when every byte arrived (S3 multipart
  uploads are aborted on error, local files are written under a temporary name and linked into
  place);
* **bounded memory** -- objects are streamed, so a 50 GB ``pg_dump`` needs about one upload
  part of memory, and the sha256 and size recorded in the manifest are computed from the very
  bytes that were sent.

On S3 every upload also carries a SHA-256 checksum the store checks and keeps with the object
(:class:`StoreChecksum`): verifying the object later is one metadata request, not a download.
SHA-256 rather than CRC64NVME because boto3 computes CRC64NVME only with the optional ``awscrt``
package (and moto without it stores a CRC32 under CRC64NVME's name); S3 keeps SHA-256 as a
digest of the whole object for a single PUT and as a digest of the part digests (COMPOSITE) for
a multipart upload -- S3 has no full-object SHA-256 for multipart uploads. A deliberate
overwrite cannot keep a SHA-256, which it could with a CRC.

Plain synchronous code: Prefect tasks wrap it, tests call it directly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from ..errors import Refused
from .object_lock import BucketLockConfiguration, ObjectRetention

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
#: S3 refuses multipart parts below 5 MiB (except the last one).
MIN_PART_SIZE = 5 * MiB
DEFAULT_PART_SIZE = 16 * MiB
#: Parts of a multipart upload on their way while the next one is read: the producer of
#: the stream (pg_dump) does not wait for the store's round trip of each part (before, the
#: pipe filled and pg_dump stopped while a part was sent). Memory: this many parts, plus
#: the one being read.
UPLOADS_IN_FLIGHT = 1
#: S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
#: Read size for hashing and copying; small enough to keep memory flat.
CHUNK_SIZE = 1 * MiB
DEFAULT_PAGE_SIZE = 1000
#: Restores fetch large S3 objects in byte ranges, this many at a time: one stream per
#: connection is what limits a download from S3, not the disk. Objects up to the part size
#: come in one request; a larger one in about one range per worker (see :func:`range_span`).
DOWNLOAD_PART_SIZE = 8 * MiB
DOWNLOAD_WORKERS = 4
#: The checksum letta-ops asks S3 to keep with every object it uploads.
STORE_CHECKSUM_ALGORITHM = "SHA256"
#: S3's checksum fields, in the order one is picked when a response carries several.
_CHECKSUM_FIELDS = ("SHA256", "CRC64NVME", "CRC32C", "CRC32", "SHA1")

ProgressCallback = Callable[[int], None]

_PARTIAL_RE = re.compile(r"\.partial-[0-9a-f]{16}$")
_URL_FORMS = "s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH"


class ObjectExistsError(FileExistsError):
    """The key already holds an object; backup objects are never overwritten."""


@dataclass(frozen=True)
class StoreChecksum:
    """A checksum the store computed over an object and reports in its metadata (S3's
    ``x-amz-checksum-*``): comparing it later costs one metadata request, not a download.

    ``type`` is ``FULL_OBJECT`` (a digest of the bytes) or ``COMPOSITE`` (S3's digest of the
    part digests of a multipart upload); ``value`` is base64, without S3's ``-N`` suffix.
    """

    algorithm: str
    type: str
    value: str

    def matches(self, other: StoreChecksum | None) -> bool:
        """Same algorithm and digest; the type is left out because stores do not all report
        it (moto omits it for a single PUT) and the digest alone decides."""
        return other is not None and (self.algorithm, self.value) == (other.algorithm, other.value)


def checksum_in(response: dict[str, Any]) -> StoreChecksum | None:
    """The store checksum an S3 response (PUT, CompleteMultipartUpload, HEAD) reports, if any."""
    for algorithm in _CHECKSUM_FIELDS:
        reported = response.get(f"Checksum{algorithm}")
        if reported:
            value, _, parts = str(reported).partition("-")  # base64 never contains "-"
            kind = response.get("ChecksumType") or ("COMPOSITE" if parts else "FULL_OBJECT")
            return StoreChecksum(algorithm=algorithm, type=kind, value=value)
    return None


def _version_of(response: dict[str, Any]) -> str | None:
    """The version id a write reports; None for an unversioned bucket (S3 and moto answer a
    multipart upload there with the literal "null", which a read may not ask for)."""
    version = response.get("VersionId")
    return None if version in (None, "", "null") else str(version)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class StoredObject:
    """What was stored: the key (relative to the store), its size and its sha256 hex digest,
    and the checksum the store keeps with it (None where the store keeps none)."""

    key: str
    size: int
    sha256: str
    store_checksum: StoreChecksum | None = None
    #: The store's ETag and version id of what was written (None where it has none): the
    #: manifest records them and later reads are pinned to them (:class:`ReadPin`).
    etag: str | None = None
    version_id: str | None = None


@dataclass(frozen=True)
class ReadPin:
    """What a read of an object must get: the ETag (``If-Match``) and, on a versioned bucket,
    the version (``VersionId``) recorded when it was written. Why: a set is checked, then
    read again to restore; without a pin the second read could get bytes written in between."""

    etag: str | None = None
    version_id: str | None = None


class ObjectChanged(Refused):
    """An object no longer is what its set recorded (another ETag): it is not read."""


@dataclass(frozen=True)
class ObjectMetadata:
    """What the store says about an object without reading it."""

    key: str
    size: int
    store_checksum: StoreChecksum | None


@dataclass(frozen=True)
class ListedObject:
    """One entry of :meth:`ObjectStore.list`; ``last_modified`` is timezone-aware UTC."""

    key: str
    size: int
    last_modified: datetime


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def validate_key(key: str) -> str:
    """Return ``key`` if it stays inside the store, else raise ``ValueError``.

    Why so strict: keys are built from server names and agent ids, and a key like
    ``../other-server/manifest.json`` must never reach another server's backups (or, locally,
    another directory). The same rules apply to both stores so a set that fits one fits both.
    """
    if not isinstance(key, str) or not key:
        raise Refused("An object key must be a non-empty string.")
    if "\x00" in key or "\\" in key:
        raise Refused(f"Object key {key!r} contains a NUL byte or a backslash; use '/' only.")
    if key.startswith("/"):
        raise Refused(f"Object key {key!r} is absolute; keys are relative to the store.")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise Refused(
            f"Object key {key!r} has an empty, '.' or '..' segment and could escape the store."
        )
    if _PARTIAL_RE.search(parts[-1]):
        raise Refused(f"Object key {key!r} ends like a temporary upload name; pick another.")
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key` but also accepts ``""`` and a trailing ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _part_sent(sending: Future[dict[str, Any]], progress: ProgressCallback | None) -> dict:
    """Wait for one part's upload; its entry of CompleteMultipartUpload's list."""
    part = sending.result()
    if progress is not None:
        progress(part["Size"])
    return {key: value for key, value in part.items() if key != "Size"}


def _read_part(stream: BinaryIO, size: int) -> bytearray:
    """Read up to ``size`` bytes, looping over short reads; fewer only at end of stream.

    Appending small reads to one bytearray keeps the peak near ``size`` (joining a list of
    chunks would briefly hold the part twice).
    """
    buffer = bytearray()
    while len(buffer) < size:
        chunk = stream.read(min(CHUNK_SIZE, size - len(buffer)))
        if not chunk:
            break
        buffer += chunk
        del chunk
    return buffer


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------


class ObjectStore(ABC):
    """Write-once object storage for backup sets.

    ``progress`` callbacks receive the number of bytes just stored (an increment, as boto3's
    ``Callback`` does), so they can feed a progress bar directly.
    """

    @abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, *, progress: ProgressCallback | None = None
    ) -> StoredObject:
        """Store everything ``stream`` yields under ``key``; raise if ``key`` exists."""

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Store a small in-memory object (a manifest, an agent file)."""
        return self.put_stream(key, io.BytesIO(data))

    def put_file(
        self, key: str, path: str | os.PathLike[str], progress: ProgressCallback | None = None
    ) -> StoredObject:
        """Store a local file, streaming it."""
        with open(path, "rb") as handle:
            return self.put_stream(key, handle, progress=progress)

    @abstractmethod
    def open_read(
        self, key: str, *, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """A context manager yielding a binary stream over the object (not loaded in memory),
        or over ``length`` bytes of it from ``start`` (a ranged read).

        Raises ``FileNotFoundError`` if the object does not exist.
        """

    @abstractmethod
    def metadata(self, key: str) -> ObjectMetadata:
        """Size and store checksum of the object, without reading it.

        Raises ``FileNotFoundError`` if the object does not exist.
        """

    def read_bytes(self, key: str) -> bytes:
        """The whole object in memory; only for small objects such as manifests."""
        with self.open_read(key) as stream:
            return stream.read()

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list(
        self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (as in S3)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and return how many were deleted.

        An empty prefix is refused: wiping a whole store is never what retention means.
        """
        if not prefix:
            raise Refused("Refusing to delete with an empty prefix (it would wipe the store).")
        validate_prefix(prefix)
        count = 0
        for item in list(self.list(prefix)):
            self.delete(item.key)
            count += 1
        return count

    def hash_object(self, key: str) -> StoredObject:
        """Re-read the stored object and compute its sha256 and size: the verification step."""
        digest = hashlib.sha256()
        size = 0
        with self.open_read(key) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def download_to(self, key: str, path: str | os.PathLike[str]) -> StoredObject:
        """Copy the object into the local file ``path`` (streamed) and return its size and
        sha256, for the caller to compare with the manifest. One sequential stream."""
        digest = hashlib.sha256()
        size = 0
        with self.open_read(key) as source, open(path, "wb") as out:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    @abstractmethod
    def describe(self) -> str:
        """Where this store points, as a URL safe for logs and the audit (never credentials)."""

    #: The retention every object this store writes gets (S3 Object Lock); None: unlocked.
    retention: ObjectRetention | None = None
    #: The repository's MAC keys (:class:`letta_ops.tasks.sets.authentication.RepositoryKeys`),
    #: set by whoever opens the store; None: a keyless repository.
    repository_keys: Any = None

    def pin_reads(self, pins: Mapping[str, ReadPin]) -> None:
        """Hold every later read (and metadata request) of these objects to what their set
        recorded. A store without ETags or versions (a directory) has nothing to pin."""
        return None

    def bucket_lock(self) -> BucketLockConfiguration | None:
        """The store's Object Lock settings; None where the store has no such thing (a
        directory)."""
        return None

    def active_lock(self, prefix: str, now: datetime) -> ObjectRetention | None:
        """The lock that still holds an object under ``prefix`` at ``now`` (the one ending
        last; a legal hold beats any date), or None when every object may be deleted.

        Retention (prune) asks this before deleting a set: a store that cannot lock says None.
        """
        return None
