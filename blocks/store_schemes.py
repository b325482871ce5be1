"""Every kind of repository letta-ops keeps backup sets in, in one table.

Why a table: ``--store`` URLs, saved blocks and doctor need the same list; before, adding a
scheme touched four files. Adding one now is a driver under ``letta_ops.tasks.store`` (an
:class:`letta_ops.tasks.store.objects.ObjectStore`), its URL form in
:func:`letta_ops.tasks.store.locations.parse_store_url` and ``open_store``, a block with
``from_location``, and one line below. The blocks load lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .runtime_kinds import load_block


@dataclass(frozen=True)
class StoreScheme:
    """One repository URL scheme: its block, its driver, what doctor checks there."""

    scheme: str
    #: ``.module:Class`` of the block, relative to ``letta_ops.blocks``.
    block: str
    #: The module under ``letta_ops.tasks.store`` that reads and writes the objects.
    driver: str
    #: ``letta-ops doctor`` checks that look at this kind of store.
    doctor_checks: tuple[str, ...]

    def block_type(self) -> Any:
        return load_block(self.block)


STORE_SCHEMES: dict[str, StoreScheme] = {
    scheme.scheme: scheme
    for scheme in (
        StoreScheme(
            "s3",
            ".backup_store:S3BackupStore",
            "letta_ops.tasks.store.s3",
            (
                "backup-age",
                "backup-lock",
                "backup-delete",
                "backup-encryption",
                "backup-authentication",
            ),
        ),
        StoreScheme(
            "file",
            ".backup_store:LocalBackupStore",
            "letta_ops.tasks.store.local",
            ("backup-age", "backup-encryption", "backup-authentication"),
        ),
    )
}
