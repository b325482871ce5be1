"""Verification of a SQLite server's set: the stored copy downloaded, checked by SQLite itself
(``PRAGMA integrity_check``) and counted, table by table, against the manifest.

Why download it: checksums prove the bytes are the ones written, not that they are a database
SQLite can open; only SQLite reading every page says so. The same read answers the drill (the
copy opened and every table counted), so a drill of a SQLite set costs no second download.
"""

from __future__ import annotations

from ..sqlite.online_copy import integrity_problems, table_counts
from ..store.objects import ObjectStore
from .manifest import BackupManifest
from .verification import compare_counts, downloaded


def check_sqlite_copy(store: ObjectStore, manifest: BackupManifest) -> dict:
    """The copy's integrity, the counted tables it lacks, and every count that differs."""
    expected = manifest.objects[manifest.dump]
    with downloaded(store, manifest.dump, expected.sha256) as path:
        problems = integrity_problems(path)
        counts = {} if problems else table_counts(path)
    return {
        "integrity": problems or ["ok"],
        "tables": len(counts),
        "tables_missing": sorted(set(manifest.row_counts) - set(counts)),
        "count_differences": compare_counts(manifest.row_counts, counts) if counts else [],
        "bytes_read": expected.stored_bytes,
    }
