"""Backup sets in an S3-compatible bucket: write-once multipart uploads with kept SHA-256
checksums, pinned reads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ..errors import Refused
from .object_lock import (
    BucketLockConfiguration,
    ObjectLock,
)
from .objects import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_PART_SIZE,
    DOWNLOAD_PART_SIZE,
    DOWNLOAD_WORKERS,
    MAX_PARTS,
    MIN_PART_SIZE,
    STORE_CHECKSUM_ALGORITHM,
    UPLOADS_IN_FLIGHT,
    ListedObject,
    MiB,
    ObjectChanged,
    ObjectExistsError,
    ObjectMetadata,
    ObjectStore,
    ProgressCallback,
    ReadPin,
    StoreChecksum,
    StoredObject,
    _b64,
    _part_sent,
    _read_part,
    _version_of,
    checksum_in,
    validate_key,
    validate_prefix,
)
from .ranged_reads import (
    download_in_ranges,
    range_span,
)
from .s3_errors import (
    _error_code,
    _http_status,
    _is_conditional_unsupported,
    _is_not_found,
    _is_precondition_failed,
)
from .s3_object_lock import S3ObjectLock

logger = logging.getLogger(__name__)


class S3ObjectStore(S3ObjectLock, ObjectStore):
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
            raise self._read_error(key, exc) from exc
        body = response["Body"]
        try:
            yield body
        finally:
            body.close()

    def _read_error(self, key: str, exc: Exception) -> Exception:
        """What a failed read of ``key`` means: gone, changed since the set was pinned, or
        the store's own error."""
        if _is_not_found(exc):
            return FileNotFoundError(f"Object {key!r} does not exist in {self.describe()}.")
        if _is_precondition_failed(exc):
            return self._changed(key)
        return exc

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
            raise self._read_error(key, exc) from exc
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


def _checksum_arguments(sha256_b64: str) -> dict[str, str]:
    """Request arguments that make S3 check ``sha256_b64`` against the body and keep it.

    Giving the value (not only the algorithm) stops botocore from hashing the body again;
    the algorithm header is what tells moto (and S3) which checksum the request carries.
    """
    return {"ChecksumAlgorithm": STORE_CHECKSUM_ALGORITHM, "ChecksumSHA256": sha256_b64}


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
