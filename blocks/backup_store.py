"""Where backup sets go: an S3-compatible bucket or a local directory, as Prefect Blocks.

Why blocks *and* URLs: a scheduled deployment loads a saved block (credentials encrypted in
Prefect), while an operator at a shell passes ``--store s3://bucket/prefix`` or sets
``LETTA_OPS_STORE`` and lets boto3 read its usual ``AWS_*`` variables. Both end in the same
:class:`~letta_ops.tasks.store.objects.ObjectStore`, so flows never care which one was used.

No I/O at import or construction: boto3 is imported and a client built only in
:meth:`S3BackupStore.object_store`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from ..tasks.errors import Refused
from ..tasks.store.local import LocalObjectStore
from ..tasks.store.locations import StoreLocation, parse_store_url, with_object_lock
from ..tasks.store.object_lock import (
    LOCK_DAYS_ENV,
    LOCK_MODE_ENV,
    ObjectLock,
    object_lock_from_settings,
)
from ..tasks.store.objects import DEFAULT_PART_SIZE, ObjectStore, validate_key
from ..tasks.store.s3 import S3ObjectStore
from .block_docs import LOGO_URL, readme_section
from .store_schemes import STORE_SCHEMES

MiB = 1024 * 1024

_ENCRYPTION_KEY_HELP = (
    "Client-side encryption key of new backup sets: 32 random bytes in base64 (make one with "
    "'letta-ops backups new-key'; keep a copy outside the store, no set restores without it). "
    "Every object of a set but its manifest and catalog records is encrypted with AES-256-GCM; "
    "the manifest records the key's id, never the key. Empty: LETTA_OPS_ENCRYPTION_KEY (or "
    "LETTA_OPS_ENCRYPTION_KEY_FILE), else new sets are not encrypted."
)
_SIGNING_KEY_HELP = (
    "A key (from 'letta-ops backups new-key') that authenticates the manifests and records of "
    "a repository that is not encrypted (LETTA_OPS_SIGNING_KEY). Not needed with an "
    "encryption key, which authenticates them too. Keep it outside the bucket: whoever can "
    "write to the bucket could otherwise plant a set letta-ops would restore."
)
_PREVIOUS_KEYS_HELP = (
    "Keys of earlier rotations, separated by commas or newlines: sets written with them stay "
    "readable. Added to LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS and the key file's other lines."
)


class S3BackupStore(Block):
    """Backup sets in an S3-compatible bucket (AWS S3, MinIO, Ceph, Garage, R2, ...).

    Fields left empty fall back to boto3's own configuration (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, profiles, instance
    roles), so a block can hold only the bucket and let the environment supply the rest.
    """

    # Validation errors must never echo a secret back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    @classmethod
    def from_location(cls, location: StoreLocation) -> S3BackupStore:
        """An unsaved block for ``s3://BUCKET/PREFIX`` (credentials stay with boto3)."""
        return cls(bucket=location.bucket, prefix=location.prefix)

    _block_type_name = "Letta Backup Store S3"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Backups")
    _description = (
        "An S3-compatible bucket and prefix holding write-once Letta backup sets, with optional "
        "credentials and endpoint."
    )

    bucket: str = Field(description="Name of the bucket that holds the backup sets.")
    prefix: str = Field(
        default="",
        description="Key prefix inside the bucket, e.g. 'letta/prod'; backup sets are written "
        "under <prefix>/<server>/<timestamp>-<run id>/.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store, e.g. http://minio:9000; empty for AWS "
        "S3 or to use AWS_ENDPOINT_URL.",
    )
    region_name: str | None = Field(
        default=None,
        description="Region of the bucket; empty to use AWS_DEFAULT_REGION or the profile's.",
    )
    aws_access_key_id: str | None = Field(
        default=None,
        description="Access key id; empty to use boto3's credential chain (environment, "
        "profile, instance role).",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        description="Secret access key belonging to the access key id; stored encrypted.",
    )
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path",
        description="How the bucket appears in request URLs; most self-hosted S3-compatible "
        "stores need 'path'.",
    )
    checksum_mode: Literal["when_required", "when_supported"] = Field(
        default="when_required",
        description="When boto3 adds request checksums and validates response checksums; "
        "'when_required' works with stores that reject boto3's default CRC32 headers.",
    )
    part_size_mb: int = Field(
        default=DEFAULT_PART_SIZE // MiB,
        ge=5,
        le=5 * 1024,
        description="Multipart upload part size in MiB (S3 minimum 5); uploads hold about one "
        "part in memory, and objects may have at most 10,000 parts.",
    )
    lock_days: float | None = Field(
        default=None,
        gt=0,
        title="Object Lock days",
        description="Lock every object of a new backup set for this many days with S3 Object "
        "Lock (the bucket must have Object Lock enabled; a backup into a bucket without it is "
        "refused before anything is written); empty for no lock. Prune keeps a locked set "
        "until its lock ends.",
    )
    lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        default="GOVERNANCE",
        title="Object Lock mode",
        description="GOVERNANCE: a principal allowed s3:BypassGovernanceRetention can still "
        "lift the lock; COMPLIANCE: nobody can delete the objects (not even the account root) "
        "until the lock ends.",
    )
    encryption_key: SecretStr | None = Field(
        default=None, title="Encryption key", description=_ENCRYPTION_KEY_HELP
    )
    previous_encryption_keys: SecretStr | None = Field(
        default=None, title="Previous encryption keys", description=_PREVIOUS_KEYS_HELP
    )
    signing_key: SecretStr | None = Field(
        default=None, title="Signing key", description=_SIGNING_KEY_HELP
    )

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        value = value.strip()
        if not value or "/" in value:
            raise ValueError("The bucket must be a bare bucket name, without '/' or s3://.")
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if value:
            validate_key(value)
        return value

    @property
    def url(self) -> str:
        """The repository URL of this store (never with credentials)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _client(self) -> Any:
        import boto3.session
        from botocore.config import Config

        config = Config(
            request_checksum_calculation=self.checksum_mode,
            response_checksum_validation=self.checksum_mode,
            s3={"addressing_style": self.addressing_style},
        )
        kwargs: dict[str, Any] = {"config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.region_name:
            kwargs["region_name"] = self.region_name
        if self.aws_access_key_id:
            kwargs["aws_access_key_id"] = self.aws_access_key_id
        if self.aws_secret_access_key is not None:
            kwargs["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
        # A session of its own: boto3's default one keeps the first credentials it resolved.
        return boto3.session.Session().client("s3", **kwargs)

    def object_store(self) -> S3ObjectStore:
        """An :class:`S3ObjectStore` over this bucket and prefix (builds a boto3 client);
        with ``lock_days``, every object it writes is locked."""
        lock = ObjectLock(self.lock_mode, self.lock_days) if self.lock_days else None
        return S3ObjectStore(
            self._client(),
            self.bucket,
            self.prefix,
            part_size=self.part_size_mb * MiB,
            lock=lock,
        )


class LocalBackupStore(Block):
    """Backup sets in a local (or mounted) directory.

    Suited to a single host or a mounted NAS; keep it off the disk that holds the database
    being backed up.
    """

    _block_type_name = "Letta Backup Store Local"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Backups")
    _description = "A local or mounted directory holding write-once Letta backup sets."

    # Validation errors must never echo a key back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    @classmethod
    def from_location(cls, location: StoreLocation) -> LocalBackupStore:
        """An unsaved block for ``file:///PATH``."""
        assert location.path is not None
        return cls(path=location.path)

    path: Path = Field(
        description="Absolute path of the directory holding the backup sets, e.g. "
        "/var/backups/letta; created on first write.",
    )
    encryption_key: SecretStr | None = Field(
        default=None, title="Encryption key", description=_ENCRYPTION_KEY_HELP
    )
    previous_encryption_keys: SecretStr | None = Field(
        default=None, title="Previous encryption keys", description=_PREVIOUS_KEYS_HELP
    )
    signing_key: SecretStr | None = Field(
        default=None, title="Signing key", description=_SIGNING_KEY_HELP
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_absolute():
            raise ValueError(
                f"The backup directory {str(value)!r} is relative; give an absolute path."
            )
        return value

    @property
    def url(self) -> str:
        """The repository URL of this store."""
        return self.path.as_uri()

    def object_store(self) -> LocalObjectStore:
        """A :class:`LocalObjectStore` over this directory."""
        return LocalObjectStore(self.path)


def with_store_encryption(
    store: ObjectStore,
    block: S3BackupStore | LocalBackupStore | None = None,
    environ: Mapping[str, str] | None = None,
) -> ObjectStore:
    """``store`` encrypting new sets and decrypting old ones with the key ring of ``block``'s
    fields and the environment (``LETTA_OPS_ENCRYPTION_KEY``, ``LETTA_OPS_ENCRYPTION_KEY_FILE``,
    ``LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS``); as it is when no key is configured anywhere.

    A set's manifest and catalog records stay plaintext (:func:`stays_plaintext`), so
    ``backups list``, ``prune`` and a key-less ``verify`` need no key. They are authenticated
    with MAC keys derived from the same keys, or from the signing key (the block's
    ``signing_key``, else ``LETTA_OPS_SIGNING_KEY``) when nothing is encrypted.
    """
    from ..tasks.sets.authentication import open_repository

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    return open_repository(
        store,
        secret(getattr(block, "encryption_key", None)),
        secret(getattr(block, "previous_encryption_keys", None)),
        secret(getattr(block, "signing_key", None)),
        environ,
    )


def backup_store_from_url(url: str) -> S3BackupStore | LocalBackupStore:
    """Build an unsaved block from a ``--store`` / ``LETTA_OPS_STORE`` repository URL.

    Accepts ``s3://bucket/prefix``, ``file:///abs/path`` or a bare absolute path. S3
    credentials, region and endpoint are left empty on purpose: boto3 reads them from its own
    environment variables when the store is opened, and nothing secret is copied into a block.
    """
    location = parse_store_url(url)
    return STORE_SCHEMES[location.scheme].block_type().from_location(location)


def apply_object_lock(
    store: ObjectStore,
    lock_days: float | None = None,
    lock_mode: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ObjectStore:
    """The store a backup writes its set through, locked as asked.

    Which lock, first match wins: ``lock_days`` (``--lock-days``; 0 means no lock), else
    ``LETTA_OPS_LOCK_DAYS``, else the saved block's ``lock_days`` (already in ``store``). The
    mode likewise: ``lock_mode``, ``LETTA_OPS_LOCK_MODE``, the block's, GOVERNANCE. The
    bucket is checked here, so a lock it cannot keep is refused before anything is written.
    """
    env = os.environ if environ is None else environ
    current = getattr(store, "lock", None)
    mode = lock_mode or env.get(LOCK_MODE_ENV) or (current.mode if current else None)
    if lock_days is not None:
        lock = object_lock_from_settings(lock_days, mode)
    elif env.get(LOCK_DAYS_ENV, "").strip():
        lock = object_lock_from_settings(env[LOCK_DAYS_ENV], mode, source=LOCK_DAYS_ENV)
    elif current is not None:
        lock = ObjectLock(mode or current.mode, current.days)
    else:
        if lock_mode:
            raise Refused(
                f"--lock-mode was given without a lock; add --lock-days N (or set {LOCK_DAYS_ENV})."
            )
        return store
    locked = with_object_lock(store, lock)
    holder = getattr(locked, "inner", locked)  # under client-side encryption, the bytes' store
    if isinstance(holder, S3ObjectStore):
        holder.require_object_lock()
    return locked


__all__ = [
    "LocalBackupStore",
    "S3BackupStore",
    "apply_object_lock",
    "backup_store_from_url",
    "with_store_encryption",
]
