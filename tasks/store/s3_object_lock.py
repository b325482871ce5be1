"""S3 Object Lock on a bucket letta-ops writes to: the bucket's configuration, the lock each new
object gets, and the proof that the store kept it.

Why a mixin of its own: the lock is one concern of :class:`letta_ops.tasks.store.s3.S3ObjectStore`
(a backup set that cannot be deleted before its retain-until date, as restic's and pgBackRest's
immutable repositories), apart from uploading and reading the bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..errors import Refused
from .object_lock import (
    BucketLockConfiguration,
    ObjectLock,
    ObjectRetention,
    _holds,
    _retention_in,
)
from .s3_errors import (
    _error_code,
    _http_status,
    _is_conditional_unsupported,
)

logger = logging.getLogger(__name__)


class S3ObjectLock:
    """The Object Lock half of an S3 store (``client``, ``bucket``, ``lock`` and ``retention``
    come from the store it is mixed into)."""

    client: Any
    bucket: str
    lock: ObjectLock | None
    retention: ObjectRetention | None
    _bucket_lock: BucketLockConfiguration | None

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
