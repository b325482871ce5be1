"""Backup sets in a local directory: write-once files, linked into place only when every byte
arrived.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from .objects import (
    _PARTIAL_RE,
    CHUNK_SIZE,
    DEFAULT_PAGE_SIZE,
    ListedObject,
    ObjectExistsError,
    ObjectMetadata,
    ObjectStore,
    ProgressCallback,
    StoredObject,
    validate_key,
    validate_prefix,
)

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
