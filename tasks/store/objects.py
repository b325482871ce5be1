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
import errno
import hashlib
import io
import logging
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from letta_ops.tasks.errors import Refused

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
# S3 Object Lock
# --------------------------------------------------------------------------------------------

#: S3 Object Lock's retention modes: GOVERNANCE can be lifted by a principal allowed
#: s3:BypassGovernanceRetention, COMPLIANCE by nobody (not even the account root) until it ends.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: Mode reported for an object under a legal hold: locked with no end date.
LEGAL_HOLD = "LEGAL_HOLD"


def parse_lock_mode(text: str | None) -> str:
    """``governance`` / ``compliance`` in any case -> S3's spelling; GOVERNANCE when empty."""
    mode = (text or "GOVERNANCE").strip().upper()
    if mode not in LOCK_MODES:
        raise Refused(f"Object Lock mode {text!r} is not known; use 'governance' or 'compliance'.")
    return mode


@dataclass(frozen=True)
class ObjectRetention:
    """A lock on stored objects: its mode and the moment it ends (None: a legal hold, which
    ends only when someone lifts it)."""

    mode: str
    retain_until: datetime | None

    def active(self, now: datetime) -> bool:
        """Whether S3 still refuses to delete the object at ``now``."""
        return self.retain_until is None or self.retain_until > now

    def describe(self) -> str:
        if self.retain_until is None:
            return "under a legal hold (no end date)"
        return f"locked ({self.mode.lower()}) until {self.retain_until.isoformat()}"


@dataclass(frozen=True)
class ObjectLock:
    """What a backup asks for: every object written gets ``mode`` retention for ``days``.

    ``days`` may be fractional (S3 takes a retain-until *date* per object, to the second);
    operators use whole days, tests use seconds.
    """

    mode: str
    days: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_lock_mode(self.mode))
        if not self.days > 0:
            raise Refused(f"Object Lock days must be above zero, not {self.days!r}.")

    def retention(self, now: datetime) -> ObjectRetention:
        """The retention of objects written from ``now``: rounded up to a whole second,
        because S3 stores retain-until dates to the second."""
        until = now.astimezone(UTC) + timedelta(days=self.days)
        if until.microsecond:
            until = until.replace(microsecond=0) + timedelta(seconds=1)
        return ObjectRetention(mode=self.mode, retain_until=until)


#: Environment variables that lock the objects of new backup sets (S3 Object Lock).
LOCK_DAYS_ENV = "LETTA_OPS_LOCK_DAYS"
LOCK_MODE_ENV = "LETTA_OPS_LOCK_MODE"


def object_lock_from_settings(
    days: float | str | None, mode: str | None, *, source: str = "--lock-days"
) -> ObjectLock | None:
    """An :class:`ObjectLock` from a flag, variable or block field; None when ``days`` is
    empty or zero (no lock asked for)."""
    if days is None or (isinstance(days, str) and not days.strip()):
        return None
    try:
        value = float(days)
    except ValueError as exc:
        raise Refused(f"{source} must be a number of days, not {days!r}.") from exc
    if value == 0:
        return None
    if value < 0:
        raise Refused(f"{source} must be a positive number of days, not {days!r}.")
    return ObjectLock(mode=parse_lock_mode(mode), days=value)


@dataclass(frozen=True)
class BucketLockConfiguration:
    """A bucket's Object Lock settings (``GetObjectLockConfiguration``)."""

    enabled: bool
    default_mode: str | None = None
    default_days: int | None = None
    default_years: int | None = None

    def describe(self) -> str:
        if not self.enabled:
            return "Object Lock is not enabled"
        if not self.default_mode:
            return "Object Lock is enabled, no default retention"
        period = (
            f"{self.default_days} day(s)" if self.default_days else f"{self.default_years} year(s)"
        )
        return f"Object Lock is enabled, default retention {self.default_mode.lower()} {period}"


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


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------


def _error_code(exc: Exception) -> str:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(exc: Exception) -> int:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"} or _http_status(exc) == 404


def _is_precondition_failed(exc: Exception) -> bool:
    # 412 when the key exists; 409 ConditionalRequestConflict when another upload raced us.
    return _error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"} or (
        _http_status(exc) in {409, 412} and _error_code(exc) != "BucketAlreadyExists"
    )


def _is_conditional_unsupported(exc: Exception) -> bool:
    """Some S3-compatible stores reject ``If-None-Match`` instead of ignoring it."""
    return _error_code(exc) in {"NotImplemented", "NotSupported"} or _http_status(exc) == 501


class S3ObjectStore(ObjectStore):
    """Objects in an S3-compatible bucket, under an optional key prefix.

    Uploads are multipart once an object exceeds one part, so memory stays near ``part_size``
    whatever the object size. Write-once is enforced twice: a ``head_object`` check first (for
    stores that ignore conditional writes) and ``IfNoneMatch="*"`` on the final request (so
    two concurrent writers cannot both win where the store supports it). Every upload sends
    SHA-256 checksums the store checks and keeps; downloads of large objects run in parallel
    byte ranges (``download_part_size``, ``download_workers``).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        download_part_size: int = DOWNLOAD_PART_SIZE,
        download_workers: int = DOWNLOAD_WORKERS,
        lock: ObjectLock | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise Refused(f"S3 bucket name {bucket!r} is empty or contains '/'.")
        if part_size < MIN_PART_SIZE:
            raise Refused(f"S3 part size {part_size} bytes is below the 5 MiB minimum S3 accepts.")
        if download_part_size < 1 or download_workers < 1:
            raise Refused("The S3 download part size and worker count must both be at least 1.")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.download_part_size = download_part_size
        self.download_workers = download_workers
        #: Turned off after a store answers 501 to ``If-None-Match``; the head check remains.
        self.conditional_writes = True
        #: Turned off (and said once) when the store keeps no checksum with what it stores.
        self.keeps_checksums = True
        #: With a lock, every object this store writes is locked until the *same* moment
        #: (this store's creation plus the lock's days): a backup set opens its own store, so
        #: the whole set becomes prunable at one date, the one its manifest records.
        self.lock = lock
        self.retention = lock.retention(datetime.now(UTC)) if lock else None
        self._bucket_lock: BucketLockConfiguration | None = None
        self._read_pins: dict[str, ReadPin] = {}

    # -- keys ---------------------------------------------------------------------------------

    def pin_reads(self, pins: Mapping[str, ReadPin]) -> None:
        self._read_pins.update({k: p for k, p in pins.items() if p.etag or p.version_id})

    def _pinned(self, key: str) -> dict[str, str]:
        """``IfMatch`` / ``VersionId`` arguments of a read of ``key`` (empty: unpinned)."""
        pin = self._read_pins.get(key)
        if pin is None:
            return {}
        found = {"IfMatch": pin.etag, "VersionId": pin.version_id}
        return {name: value for name, value in found.items() if value}

    def _changed(self, key: str) -> ObjectChanged:
        return ObjectChanged(
            f"Object {key!r} in {self.describe()} is no longer the one its backup set recorded "
            "(another ETag): it was rewritten after the set was written and is not read; run "
            "'letta-ops verify' on the set."
        )

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _full_prefix(self, prefix: str) -> str:
        validate_prefix(prefix)
        if not self.prefix:
            return prefix
        return f"{self.prefix}/{prefix}"

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    # -- Object Lock --------------------------------------------------------------------------

    def bucket_lock(self) -> BucketLockConfiguration:
        """The bucket's Object Lock configuration (one request, then remembered)."""
        from botocore.exceptions import ClientError

        if self._bucket_lock is not None:
            return self._bucket_lock
        try:
            response = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            # Not configured, or a store that has no Object Lock at all (501 NotImplemented).
            if _error_code(exc) not in {
                "ObjectLockConfigurationNotFoundError",
                "NotImplemented",
                "MethodNotAllowed",
            } and not _is_conditional_unsupported(exc):
                raise
            self._bucket_lock = BucketLockConfiguration(enabled=False)
            return self._bucket_lock
        config = response.get("ObjectLockConfiguration") or {}
        default = (config.get("Rule") or {}).get("DefaultRetention") or {}
        self._bucket_lock = BucketLockConfiguration(
            enabled=config.get("ObjectLockEnabled") == "Enabled",
            default_mode=default.get("Mode"),
            default_days=default.get("Days"),
            default_years=default.get("Years"),
        )
        return self._bucket_lock

    def _lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock, for deletes and prune plans; credentials not
        allowed to read the configuration (older prune credentials) are taken as "no lock",
        said once, and S3 itself still refuses to delete a locked version."""
        from botocore.exceptions import ClientError

        try:
            return self.bucket_lock().enabled
        except ClientError as exc:
            if _error_code(exc) != "AccessDenied" and _http_status(exc) != 403:
                raise
            logger.warning(
                "%s: these credentials may not read the bucket's Object Lock configuration "
                "(allow s3:GetBucketObjectLockConfiguration); treating it as unlocked.",
                self.describe(),
            )
            self._bucket_lock = BucketLockConfiguration(enabled=False)
            return False

    def require_object_lock(self) -> None:
        """Refuse a lock the bucket cannot keep, before anything is written.

        Why refuse rather than write unlocked: an operator who asked for immutable sets and
        silently got deletable ones finds out only when the sets are gone.
        """
        from botocore.exceptions import ClientError

        if self.lock is None:
            return
        try:
            enabled = self.bucket_lock().enabled
        except ClientError as exc:
            raise Refused(
                f"Could not read the Object Lock configuration of bucket {self.bucket!r} "
                f"({_error_code(exc) or exc}); allow s3:GetBucketObjectLockConfiguration to "
                "the backup credentials, or drop --lock-days."
            ) from exc
        if not enabled:
            raise Refused(
                f"Bucket {self.bucket!r} does not have Object Lock enabled, so its objects "
                "cannot be locked; back up into a bucket created with Object Lock (aws s3api "
                "create-bucket --object-lock-enabled-for-bucket) or drop --lock-days / "
                "LETTA_OPS_LOCK_DAYS."
            )

    def _lock_arguments(self) -> dict[str, Any]:
        """Request arguments that lock a new object (PutObject, CreateMultipartUpload).

        S3 requires a checksum header on such uploads; every upload here sends SHA-256.
        """
        if self.retention is None:
            return {}
        self.require_object_lock()
        return {
            "ObjectLockMode": self.retention.mode,
            "ObjectLockRetainUntilDate": self.retention.retain_until,
        }

    def _versions(self, full_prefix: str) -> Iterator[dict[str, Any]]:
        """Every version and delete marker under ``full_prefix`` (``ListObjectVersions``)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        while True:
            response = self.client.list_object_versions(**kwargs)
            for item in response.get("Versions", []) or []:
                yield {**item, "DeleteMarker": False}
            for item in response.get("DeleteMarkers", []) or []:
                yield {**item, "DeleteMarker": True}
            if not response.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = response.get("NextKeyMarker")
            kwargs["VersionIdMarker"] = response.get("NextVersionIdMarker")

    def active_lock(self, prefix: str, now: datetime) -> ObjectRetention | None:
        """Read the retention of every object version under ``prefix`` (one HEAD each).

        Versions, not only current objects: in a locked bucket an object "deleted" without a
        version id is only hidden behind a delete marker, and its locked version stays.
        Nothing is asked of a bucket without Object Lock.
        """
        if not prefix:
            raise Refused("Refusing to read locks with an empty prefix (the whole store).")
        if not self._lock_enabled():
            return None
        latest: ObjectRetention | None = None
        for version in self._versions(self._full_prefix(prefix)):
            if version["DeleteMarker"]:
                continue
            head = self.client.head_object(
                Bucket=self.bucket, Key=version["Key"], VersionId=version["VersionId"]
            )
            retention = _retention_in(head)
            if retention is None or not retention.active(now):
                continue
            if retention.retain_until is None:  # a legal hold: nothing ends it by date
                return retention
            if latest is None or retention.retain_until > (latest.retain_until or now):
                latest = retention
        return latest

    def _ensure_retention(self, key: str, full_key: str, version_id: str | None) -> None:
        """Make sure a just-completed multipart upload holds this store's lock.

        S3 takes the lock from CreateMultipartUpload; some S3-compatible stores (moto among
        them) drop it when the upload completes. Then PutObjectRetention sets it, and an
        object that still is not locked fails the upload rather than pass as locked.
        """
        assert self.retention is not None and self.retention.retain_until is not None
        target: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        if version_id:
            target["VersionId"] = version_id
        if _holds(_retention_in(self.client.head_object(**target)), self.retention):
            return
        self.client.put_object_retention(
            **target,
            Retention={
                "Mode": self.retention.mode,
                "RetainUntilDate": self.retention.retain_until,
            },
        )
        if not _holds(_retention_in(self.client.head_object(**target)), self.retention):
            raise OSError(
                f"{self.describe()} did not keep the Object Lock of {key!r}; use a store that "
                "supports S3 Object Lock on multipart uploads, or drop --lock-days."
            )

    # -- writes -------------------------------------------------------------------------------

    def _conditional_call(self, method: Callable[..., Any], key: str, **kwargs: Any) -> Any:
        """Call ``method`` with ``IfNoneMatch="*"``, mapping a conflict to ObjectExistsError."""
        from botocore.exceptions import ClientError

        if self.conditional_writes:
            try:
                return method(**kwargs, IfNoneMatch="*")
            except ClientError as exc:
                if _is_precondition_failed(exc):
                    raise ObjectExistsError(
                        f"Object {key!r} already exists in {self.describe()}; backups are "
                        "never overwritten."
                    ) from exc
                if not _is_conditional_unsupported(exc):
                    raise
                logger.warning(
                    "%s rejects conditional writes (If-None-Match); relying on a check "
                    "before upload instead.",
                    self.describe(),
                )
                self.conditional_writes = False
        return method(**kwargs)

    def put_stream(
        self, key: str, stream: BinaryIO, *, progress: ProgressCallback | None = None
    ) -> StoredObject:
        full_key = self._full_key(key)
        self.require_object_lock()  # a lock the bucket cannot keep: refused before writing
        if self.exists(key):
            raise ObjectExistsError(
                f"Object {key!r} already exists in {self.describe()}; backups are never "
                "overwritten."
            )
        digest = hashlib.sha256()
        data = _read_part(stream, self.part_size)
        digest.update(data)
        if len(data) < self.part_size:
            # The whole object fits in one part: one request, nothing to abort. Its sha256 is
            # also the full-object checksum the store checks and keeps.
            sent = StoreChecksum(STORE_CHECKSUM_ALGORITHM, "FULL_OBJECT", _b64(digest.digest()))
            response = self._conditional_call(
                self.client.put_object,
                key,
                Bucket=self.bucket,
                Key=full_key,
                Body=data,
                **_checksum_arguments(sent.value),
                **self._lock_arguments(),
            )
            if progress is not None:
                progress(len(data))
            return StoredObject(
                key=key,
                size=len(data),
                sha256=digest.hexdigest(),
                store_checksum=self._kept_checksum(key, sent, response),
                etag=response.get("ETag"),
                version_id=_version_of(response),
            )

        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=full_key,
            ChecksumAlgorithm=STORE_CHECKSUM_ALGORITHM,
            ChecksumType="COMPOSITE",
            **self._lock_arguments(),
        )["UploadId"]
        parts: list[dict[str, Any]] = []
        sending: deque[Future[dict[str, Any]]] = deque()
        uploads = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="s3-upload-part")
        size = 0
        try:
            while data:
                part_number = len(parts) + len(sending) + 1
                if part_number > MAX_PARTS:
                    raise Refused(
                        f"Object {key!r} needs more than {MAX_PARTS} parts of "
                        f"{self.part_size // MiB} MiB; raise the part size."
                    )
                while len(sending) >= UPLOADS_IN_FLIGHT:
                    parts.append(_part_sent(sending.popleft(), progress))
                sending.append(
                    uploads.submit(self._upload_part, full_key, upload_id, part_number, data)
                )
                size += len(data)
                del data  # the upload holds the part until it is sent
                data = _read_part(stream, self.part_size)  # while the part is on its way
                digest.update(data)
            while sending:
                parts.append(_part_sent(sending.popleft(), progress))
            response = self._conditional_call(
                self.client.complete_multipart_upload,
                key,
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            if self.retention is not None:
                self._ensure_retention(key, full_key, response.get("VersionId"))
        except BaseException:
            # Nothing partial may stay visible or billable: stop sending (a part on the wire
            # finishes first), abort, then report the real error.
            for pending in sending:
                pending.cancel()
            uploads.shutdown(wait=True)
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
            except Exception:
                logger.exception(
                    "Could not abort multipart upload %s of %r in %s; a bucket lifecycle rule "
                    "for incomplete uploads will clean it up.",
                    upload_id,
                    key,
                    self.describe(),
                )
            raise
        finally:
            uploads.shutdown(wait=True)
        #: S3's COMPOSITE checksum: the sha256 of the parts' sha256 digests, in order.
        composite = hashlib.sha256(
            b"".join(base64.b64decode(part["ChecksumSHA256"]) for part in parts)
        )
        sent = StoreChecksum(STORE_CHECKSUM_ALGORITHM, "COMPOSITE", _b64(composite.digest()))
        return StoredObject(
            key=key,
            size=size,
            sha256=digest.hexdigest(),
            store_checksum=self._kept_checksum(key, sent, response),
            etag=response.get("ETag"),
            version_id=_version_of(response),
        )

    def _upload_part(
        self, full_key: str, upload_id: str, part_number: int, data: bytearray
    ) -> dict[str, Any]:
        """Send one part with its sha256 (hashed here, in the sending thread); what
        CompleteMultipartUpload needs of it."""
        part_digest = _b64(hashlib.sha256(data).digest())
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=full_key,
            UploadId=upload_id,
            PartNumber=part_number,
            Body=data,
            **_checksum_arguments(part_digest),
        )
        return {
            "PartNumber": part_number,
            "ETag": response["ETag"],
            "ChecksumSHA256": part_digest,
            "Size": len(data),
        }

    def _kept_checksum(
        self, key: str, sent: StoreChecksum, response: dict[str, Any]
    ) -> StoreChecksum | None:
        """The checksum the store now keeps with ``key``: from the upload's response, else
        from its metadata (CompleteMultipartUpload answers without it on some stores).

        A store that keeps none (or another kind) is recorded as such, so verification knows
        what it can ask for; one that keeps a different SHA-256 received other bytes than
        were sent, and the upload fails.
        """
        kept = checksum_in(response) or self.metadata(key).store_checksum
        if kept is None:
            if self.keeps_checksums:
                logger.warning(
                    "%s keeps no checksum with its objects; verification re-reads them instead.",
                    self.describe(),
                )
            self.keeps_checksums = False
            return None
        if kept.algorithm != sent.algorithm:
            return kept
        if kept.value != sent.value:
            raise OSError(
                f"{self.describe()} holds {key!r} with another {sent.algorithm} checksum than "
                "the one sent; the upload was damaged on the way, run the backup again."
            )
        return sent

    # -- reads --------------------------------------------------------------------------------

    @contextmanager
    def _open_read(self, key: str, start: int, length: int | None) -> Iterator[BinaryIO]:
        from botocore.exceptions import ClientError

        full_key = self._full_key(key)
        if length == 0:
            yield io.BytesIO(b"")
            return
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key, **self._pinned(key)}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            kwargs["Range"] = f"bytes={start}-{end}"
        try:
            response = self.client.get_object(**kwargs)
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(
                    f"Object {key!r} does not exist in {self.describe()}."
                ) from exc
            if _is_precondition_failed(exc):
                raise self._changed(key) from exc
            raise
        body = response["Body"]
        try:
            yield body
        finally:
            body.close()

    def open_read(
        self, key: str, *, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        return self._open_read(key, start, length)

    def metadata(self, key: str) -> ObjectMetadata:
        """One ``head_object`` with ``ChecksumMode=ENABLED``: S3 reports checksums only then."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(
                Bucket=self.bucket,
                Key=self._full_key(key),
                ChecksumMode="ENABLED",
                **self._pinned(key),
            )
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(
                    f"Object {key!r} does not exist in {self.describe()}."
                ) from exc
            if _is_precondition_failed(exc):
                raise self._changed(key) from exc
            raise
        return ObjectMetadata(
            key=key, size=int(head["ContentLength"]), store_checksum=checksum_in(head)
        )

    def download_to(self, key: str, path: str | os.PathLike[str]) -> StoredObject:
        """Fetch the object in parallel byte ranges, each written at its offset in ``path``;
        the sha256 is computed in order, from the file, as ranges complete.

        Why ranges: one S3 connection streams far slower than the network allows, so a 50 GB
        dump restores faster over several. Memory stays at about one read chunk per worker.
        """
        size = self.metadata(key).size
        if size <= self.download_part_size or self.download_workers == 1:
            return super().download_to(key, path)
        span = range_span(size, self.download_part_size, self.download_workers)
        return download_in_ranges(self, key, path, size, span, self.download_workers)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        full_key = self._full_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def list(
        self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ListedObject]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._full_prefix(prefix),
            "MaxKeys": page_size,
        }
        while True:
            response = self.client.list_objects_v2(**kwargs)
            for item in response.get("Contents", []):
                modified = item["LastModified"]
                if modified.tzinfo is None:
                    modified = modified.replace(tzinfo=UTC)
                yield ListedObject(
                    key=self._relative(item["Key"]), size=int(item["Size"]), last_modified=modified
                )
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    # -- deletes ------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete one object; in a bucket with Object Lock, every version of it.

        Why versions there: Object Lock buckets are versioned, and a delete without a version
        id only hides the object behind a delete marker while its data stays (and is billed)
        forever. A version still locked makes S3 refuse (AccessDenied); retention asks
        :meth:`active_lock` first so that never happens.
        """
        full_key = self._full_key(key)
        if not self._lock_enabled():
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
            return
        for version in list(self._versions(full_key)):
            if version["Key"] == full_key:
                self.client.delete_object(
                    Bucket=self.bucket, Key=full_key, VersionId=version["VersionId"]
                )

    def delete_prefix(self, prefix: str) -> int:
        """Batch-delete (1000 keys per request), one by one where the store refuses batches.

        Some S3-compatible stores reject ``DeleteObjects`` because of its checksum header; the
        fallback keeps retention working there. In a bucket with Object Lock every version
        and delete marker goes (see :meth:`delete`). Returns the number of objects deleted.
        """
        from botocore.exceptions import ClientError

        if not prefix:
            raise Refused("Refusing to delete with an empty prefix (it would wipe the store).")
        entries: list[dict[str, str]]
        if self._lock_enabled():
            versions = list(self._versions(self._full_prefix(prefix)))
            entries = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
            count = len({v["Key"] for v in versions if not v["DeleteMarker"]})
        else:
            entries = [{"Key": self._full_key(item.key)} for item in self.list(prefix)]
            count = len(entries)
        for start in range(0, len(entries), 1000):
            batch = entries[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except ClientError as exc:
                if _error_code(exc) not in {
                    "NotImplemented",
                    "MissingContentMD5",
                    "InvalidRequest",
                    "InvalidDigest",
                    "BadDigest",
                }:
                    raise
                for entry in batch:
                    self.client.delete_object(Bucket=self.bucket, **entry)
                continue
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(
                    f"{len(errors)} objects under {prefix!r} could not be deleted from "
                    f"{self.describe()}; first: {first.get('Key')!r}: {first.get('Message')}"
                )
        return count

    def probe_delete(self) -> bool:
        """Whether these credentials may delete objects, asked without deleting anything.

        ``DeleteObject`` of a random key that does not exist: S3 answers 204 when the
        credentials may delete and AccessDenied when not. In a versioned bucket (Object Lock)
        the answer is a delete marker for that key; it is removed again (by its version id)
        when the credentials allow it, and hides nothing since the key never existed.
        """
        from botocore.exceptions import ClientError

        key = f"letta-ops-delete-probe-{secrets.token_hex(12)}"
        if self.exists(key):  # never delete a real object, however unlikely the name
            raise OSError(f"The probe key {key!r} exists in {self.describe()}; run again.")
        full_key = self._full_key(key)
        try:
            response = self.client.delete_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            if _error_code(exc) in {"AccessDenied", "AllAccessDisabled"} or _http_status(exc) in {
                401,
                403,
            }:
                return False
            raise
        marker = response.get("VersionId")
        if marker and response.get("DeleteMarker"):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=full_key, VersionId=marker)
            except ClientError as exc:
                logger.warning(
                    "The delete probe left a delete marker on %r in %s (%s); it hides nothing.",
                    key,
                    self.describe(),
                    _error_code(exc) or exc,
                )
        return True

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _retention_in(head: dict[str, Any]) -> ObjectRetention | None:
    """The Object Lock a ``head_object`` response reports (a legal hold first), if any."""
    if head.get("ObjectLockLegalHoldStatus") == "ON":
        return ObjectRetention(mode=LEGAL_HOLD, retain_until=None)
    until = head.get("ObjectLockRetainUntilDate")
    mode = head.get("ObjectLockMode")
    if not until or not mode:
        return None
    if isinstance(until, str):
        until = datetime.fromisoformat(until.replace("Z", "+00:00"))
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    return ObjectRetention(mode=str(mode), retain_until=until)


def _holds(kept: ObjectRetention | None, wanted: ObjectRetention) -> bool:
    """Whether ``kept`` locks at least as long as ``wanted``, in the same mode."""
    return (
        kept is not None
        and kept.mode == wanted.mode
        and (
            kept.retain_until is None
            or wanted.retain_until is None
            or kept.retain_until >= wanted.retain_until
        )
    )


def _checksum_arguments(sha256_b64: str) -> dict[str, str]:
    """Request arguments that make S3 check ``sha256_b64`` against the body and keep it.

    Giving the value (not only the algorithm) stops botocore from hashing the body again;
    the algorithm header is what tells moto (and S3) which checksum the request carries.
    """
    return {"ChecksumAlgorithm": STORE_CHECKSUM_ALGORITHM, "ChecksumSHA256": sha256_b64}


def range_span(size: int, part: int, workers: int, align: int = 1) -> int:
    """The length of each range when ``workers`` fetch ``size`` bytes: about one range per
    worker, never below ``part``, a multiple of ``align`` (an encrypted object's frame).

    Why so few: every request costs a round trip, and some S3-compatible servers read the
    whole object for each range they answer (moto does: 967 MiB came in 4.4 s as four ranges
    and in 76 s as 8 MiB ones). The bytes still arrive over ``workers`` connections at once,
    and each range streams to its offset in the file, so memory does not grow with the span.
    """
    span = max(part, -(-size // max(1, workers)))
    return -(-span // align) * align


def download_in_ranges(
    store: ObjectStore,
    key: str,
    path: str | os.PathLike[str],
    size: int,
    span: int,
    workers: int,
) -> StoredObject:
    """Fetch ``size`` bytes of ``store``'s object in ``span``-byte ranges, ``workers`` at a
    time (``store.open_read`` of each range), each written at its offset in ``path``; the
    sha256 is computed in order, from the file, as ranges complete."""
    ranges = [(start, min(span, size - start)) for start in range(0, size, span)]
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="download-range") as pool:
            futures = [pool.submit(_fetch_range, store, key, fd, *r) for r in ranges]
            try:
                for future, (start, length) in zip(futures, ranges, strict=True):
                    future.result()
                    _hash_file_range(fd, start, length, digest)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        os.close(fd)
    return StoredObject(key=key, size=size, sha256=digest.hexdigest())


def _fetch_range(store: ObjectStore, key: str, fd: int, start: int, length: int) -> None:
    """Write bytes ``start .. start + length`` of the object at the same offset of ``fd``."""
    written = 0
    with store.open_read(key, start=start, length=length) as body:
        while chunk := body.read(CHUNK_SIZE):
            _pwrite_all(fd, chunk, start + written)
            written += len(chunk)
    if written != length:
        raise OSError(
            f"Object {key!r} in {store.describe()} returned {written} of {length} bytes at "
            f"offset {start}; it changed or the connection broke, run the restore again."
        )


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _hash_file_range(fd: int, start: int, length: int, digest: Any) -> None:
    """Feed bytes ``start .. start + length`` of ``fd`` to ``digest`` (just written: the page
    cache answers, not the disk)."""
    end = start + length
    while start < end:
        chunk = os.pread(fd, min(CHUNK_SIZE, end - start), start)
        if not chunk:
            raise OSError(f"The download file ended at offset {start} of {end}.")
        digest.update(chunk)
        start += len(chunk)


# --------------------------------------------------------------------------------------------
# Local directory
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (a new link) so a crash cannot lose a committed object."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _BoundedReader(io.RawIOBase):
    """At most ``remaining`` bytes of ``handle``: a ranged read of a local object."""

    def __init__(self, handle: BinaryIO, remaining: int) -> None:
        self.handle = handle
        self.remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.remaining)
        if count <= 0:
            return 0
        data = self.handle.read(count)
        buffer[: len(data)] = data
        self.remaining -= len(data)
        return len(data)


class LocalObjectStore(ObjectStore):
    """Objects as files under a directory, with the same write-once semantics as S3.

    Each object is written to ``<key>.partial-<random>`` (opened with ``O_EXCL``), fsynced,
    then hard-linked to its final name: ``link`` fails if the name exists, so an existing
    object is never replaced and a reader never sees a half-written file. Temporary files are
    hidden from :meth:`list` and removed on error.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root_path = Path(root).expanduser()
        if not root_path.is_absolute():
            root_path = root_path.absolute()
        self.root = root_path

    def _path(self, key: str) -> Path:
        validate_key(key)
        return self.root.joinpath(*key.split("/"))

    def put_stream(
        self, key: str, stream: BinaryIO, *, progress: ProgressCallback | None = None
    ) -> StoredObject:
        final = self._path(key)
        if self.exists(key):
            raise ObjectExistsError(
                f"Object {key!r} already exists in {self.describe()}; backups are never "
                "overwritten."
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f"{final.name}.partial-{secrets.token_hex(8)}")
        digest = hashlib.sha256()
        size = 0
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o640)
        try:
            with os.fdopen(fd, "wb") as handle:
                while chunk := stream.read(CHUNK_SIZE):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                handle.flush()
                os.fsync(handle.fileno())
            self._commit(key, temp, final)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def _commit(self, key: str, temp: Path, final: Path) -> None:
        """Give ``temp`` its final name without ever replacing an existing object."""
        try:
            os.link(temp, final)
            return
        except FileExistsError as exc:
            raise ObjectExistsError(
                f"Object {key!r} already exists in {self.describe()}; backups are never "
                "overwritten."
            ) from exc
        except OSError as exc:
            if exc.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}:
                raise
        # No hard links on this filesystem: reserve the name with O_EXCL, then replace the
        # empty placeholder atomically. The name is still claimed by exactly one writer.
        try:
            os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        except FileExistsError as exc:
            raise ObjectExistsError(
                f"Object {key!r} already exists in {self.describe()}; backups are never "
                "overwritten."
            ) from exc
        os.replace(temp, final)

    @contextmanager
    def _open_read(self, key: str, start: int, length: int | None) -> Iterator[BinaryIO]:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"Object {key!r} does not exist in {self.describe()}.")
        with open(path, "rb") as handle:
            handle.seek(start)
            yield handle if length is None else _BoundedReader(handle, length)

    def open_read(
        self, key: str, *, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        return self._open_read(key, start, length)

    def metadata(self, key: str) -> ObjectMetadata:
        """The file's size; a directory keeps no checksum, so verification re-reads it."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"Object {key!r} does not exist in {self.describe()}.")
        return ObjectMetadata(key=key, size=path.stat().st_size, store_checksum=None)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(
        self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ListedObject]:
        """Walk only the directory the prefix points into; ``page_size`` is unused here."""
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not start.is_dir():
            return
        found: list[tuple[str, Path]] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if _PARTIAL_RE.search(name):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append((key, path))
        for key, path in sorted(found):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            yield ListedObject(
                key=key,
                size=stat.st_size,
                last_modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
            )

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove directories left empty by deletes, up to (not including) the root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def describe(self) -> str:
        return self.root.as_uri()


# --------------------------------------------------------------------------------------------
# Repository URLs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    """A parsed repository URL: either an S3 bucket and prefix, or a local directory."""

    scheme: str  # "s3" or "file"
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None


def parse_store_url(url: str) -> StoreLocation:
    """Parse a restic-style repository URL: ``s3://bucket/prefix``, ``file:///path`` or ``/path``.

    Credentials in the URL are refused: they would end up in logs and the audit history;
    they belong in boto3's environment variables or a saved block.
    """
    text = (url or "").strip()
    if text.startswith("/"):
        return StoreLocation(scheme="file", path=Path(text))
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if "@" in parsed.netloc:
            raise Refused(
                "The store URL must not contain credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or save an S3 backup store block) instead."
            )
        bucket = parsed.netloc
        if not bucket:
            raise Refused(f"The store URL {text!r} has no bucket; use {_URL_FORMS}.")
        prefix = unquote(parsed.path).strip("/")
        if prefix:
            validate_key(prefix)
        return StoreLocation(scheme="s3", bucket=bucket, prefix=prefix)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise Refused(
                f"The store URL {text!r} is not an absolute local path; use file:///ABSOLUTE/PATH."
            )
        return StoreLocation(scheme="file", path=Path(unquote(parsed.path)))
    raise Refused(f"The store URL {text!r} is not supported; use {_URL_FORMS}.")


def s3_client_from_env() -> Any:
    """A boto3 S3 client configured from boto3's own environment variables.

    With ``AWS_ENDPOINT_URL`` set (MinIO, Ceph, Garage, moto, ...) use path-style addressing
    and send checksums only when an operation requires them: boto3 >= 1.36 otherwise adds
    CRC32 headers that several S3-compatible stores reject.

    A new boto3 session each time, not boto3's default one: that one resolves credentials
    once per process and keeps them, so a worker (or a test run) that backs up one server
    with one role and restores another with another would send the first role's keys.
    """
    import boto3.session
    from botocore.config import Config

    config = None
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        config = Config(
            request_checksum_calculation=os.environ.get(
                "AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"
            ),
            response_checksum_validation=os.environ.get(
                "AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"
            ),
            s3={"addressing_style": "path"},
        )
    return boto3.session.Session().client("s3", config=config)


def open_store(
    url: str,
    *,
    s3_client_factory: Callable[[], Any] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
) -> ObjectStore:
    """Open the store a repository URL names (the ``--store`` / ``LETTA_OPS_STORE`` value)."""
    location = parse_store_url(url)
    if location.scheme == "s3":
        client = (s3_client_factory or s3_client_from_env)()
        return S3ObjectStore(client, location.bucket, location.prefix, part_size=part_size)
    assert location.path is not None
    return LocalObjectStore(location.path)


def with_object_lock(store: ObjectStore, lock: ObjectLock | None) -> ObjectStore:
    """``store`` writing every new object with ``lock`` (None: without any lock).

    A new store object (the lock is constructor state: its retain-until date is fixed when
    the store is made, so one backup set shares one date). Only S3 can lock objects.
    """
    inner = getattr(store, "inner", None)
    if isinstance(inner, ObjectStore) and hasattr(store, "over"):
        # A wrapper (client-side encryption): lock the store that holds the bytes.
        return store.over(with_object_lock(inner, lock))
    if not isinstance(store, S3ObjectStore):
        if lock is None:
            return store
        raise Refused(
            f"{store.describe()} cannot lock objects (S3 Object Lock needs an S3 bucket); "
            "back up to s3://BUCKET/PREFIX or drop --lock-days / LETTA_OPS_LOCK_DAYS."
        )
    locked = S3ObjectStore(
        store.client,
        store.bucket,
        store.prefix,
        part_size=store.part_size,
        download_part_size=store.download_part_size,
        download_workers=store.download_workers,
        lock=lock,
    )
    locked.conditional_writes = store.conditional_writes
    locked.keeps_checksums = store.keeps_checksums
    locked.repository_keys = store.repository_keys  # the same repository: the same MAC keys
    return locked


__all__ = [
    "LEGAL_HOLD",
    "LOCK_MODES",
    "BucketLockConfiguration",
    "ObjectLock",
    "ObjectRetention",
    "object_lock_from_settings",
    "parse_lock_mode",
    "with_object_lock",
    "DEFAULT_PART_SIZE",
    "DOWNLOAD_PART_SIZE",
    "range_span",
    "DOWNLOAD_WORKERS",
    "MIN_PART_SIZE",
    "ListedObject",
    "LocalObjectStore",
    "ObjectExistsError",
    "ObjectMetadata",
    "ObjectStore",
    "S3ObjectStore",
    "StoreChecksum",
    "StoreLocation",
    "StoredObject",
    "open_store",
    "parse_store_url",
    "s3_client_from_env",
    "validate_key",
]
