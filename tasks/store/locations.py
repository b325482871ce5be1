"""Where a repository lives (s3://BUCKET/PREFIX or file:///PATH), and the store that opens it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import Refused
from .local import LocalObjectStore
from .object_lock import (
    ObjectLock,
)
from .objects import (
    _URL_FORMS,
    DEFAULT_PART_SIZE,
    ObjectStore,
    validate_key,
)
from .s3 import S3ObjectStore, s3_client_from_env

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
