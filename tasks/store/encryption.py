"""Client-side encryption of backup objects: AES-256-GCM in authenticated frames.

Why: a backup set holds every agent's memory and the whole database. Whoever can read the
bucket (a leaked key, a too-broad policy, the storage provider) should read nothing, and
whoever can write it should not be able to change a byte unnoticed. The tools operators trust
(restic, pgBackRest, WAL-G) encrypt on the client; so does letta-ops, with a well-kept
library (``cryptography``'s AES-GCM and HKDF) and no home-made primitive.

Why frames (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizar): one GCM
message would need the whole object in memory and can hold at most 64 GiB. An object is

    header | frame 0 | frame 1 | ... | frame n-1

* **header** (:data:`HEADER_SIZE` bytes, plain): magic, format version, frame size, the
  *key id* of the master key (a fingerprint, never the key) and a random 32-byte salt;
* a **per-object key** = HKDF-SHA256(master key, salt): a fresh key per object, so nonces
  never repeat across objects and no counter has to be kept anywhere;
* every **frame** is ``frame_size`` bytes of plaintext (the last one shorter, possibly empty)
  sealed with AES-256-GCM (16-byte tag); its nonce is the frame's index and a *final* flag,
  and its associated data is the header and the object's key in the store.

So a frame moved to another position, a frame from another object, an object moved to
another key, a truncation at a frame boundary (the last frame left is not marked final),
appended bytes and any altered byte all fail authentication: :class:`DecryptionFailed` names
the object, and nothing decrypted so far is trusted (callers compare the plaintext sha256 as
well). Memory stays at about two frames whatever the object size, and a byte range of the
plaintext decrypts from the frames that hold it alone (the dump's table of contents, the
parallel ranged download).

Keys: 32 random bytes, written in base64 (:func:`new_key`); the key ring holds the current
key (new objects) and older ones (objects written before a rotation). The manifest records
the scheme and the key id, never the key.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import Refused
from .encryption_frames import (
    Header,
    _aad,
    _DecryptingReader,
    _EncryptingReader,
    _Prefixed,
    _read_exact,
    plain_size,
)
from .encryption_keys import (
    _MAX_FRAME,
    _MIN_FRAME,
    DEFAULT_FRAME_SIZE,
    HEADER_SIZE,
    HOW_TO_SUPPLY,
    TAG_BYTES,
    DecryptionFailed,
    EncryptionKeyMissing,
    KeyRing,
)
from .objects import (
    CHUNK_SIZE,
    DEFAULT_PAGE_SIZE,
    DOWNLOAD_PART_SIZE,
    ListedObject,
    ObjectMetadata,
    ObjectStore,
    ProgressCallback,
    StoredObject,
)
from .ranged_reads import download_in_ranges, range_span

# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedStoredObject(StoredObject):
    """What was stored, for an encrypted object: ``size`` and ``sha256`` are the plaintext's
    (what a restore compares after decrypting), ``stored_size`` and ``stored_sha256`` the
    ciphertext's (what verification without the key compares); ``store_checksum`` is the
    store's, of the ciphertext."""

    stored_size: int = 0
    stored_sha256: str = ""
    key_id: str = ""


@dataclass(frozen=True)
class _Located:
    """An encrypted object's header and stored size, read once per store (objects are
    written once, so neither changes)."""

    header: Header | None
    stored_size: int


def never_plain(_key: str) -> bool:
    return False


class EncryptedObjectStore(ObjectStore):
    """Wraps any :class:`ObjectStore`: new objects are encrypted while they stream (the
    inner store's multipart upload is unchanged), reads decrypt, whatever the flows do.

    ``plaintext(key)`` names the objects that stay readable without the key (a set's
    manifest and its catalog records). Reads decide by content: an object without the
    encryption header is read as it is, so sets written before encryption was turned on
    stay readable. Without a current key in ``key_ring`` new objects are written plain
    (a ring of old keys only, to read sets after encryption was turned off).
    ``metadata``, ``list`` and deletes describe what is *stored* (the ciphertext).
    """

    def __init__(
        self,
        inner: ObjectStore,
        key_ring: KeyRing,
        *,
        plaintext: Callable[[str], bool] = never_plain,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> None:
        if not _MIN_FRAME <= frame_size <= _MAX_FRAME:
            raise Refused(f"Frame size {frame_size} is outside {_MIN_FRAME}..{_MAX_FRAME}.")
        self.inner = inner
        self.key_ring = key_ring
        self.plaintext = plaintext
        self.frame_size = frame_size
        self._located: dict[str, _Located] = {}
        #: Objects whose set says they are encrypted: read as plaintext, they are refused.
        self._encrypted_only: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        # Everything else (bucket, client, prefix, ...) is the inner store's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"EncryptedObjectStore({self.inner.describe()}, {self.key_ring!r})"

    def over(self, inner: ObjectStore) -> EncryptedObjectStore:
        """The same encryption over another inner store (the same bucket with an Object
        Lock, for instance: ``with_object_lock`` rebuilds the store that holds the bytes)."""
        return EncryptedObjectStore(
            inner, self.key_ring, plaintext=self.plaintext, frame_size=self.frame_size
        )

    def expect_encrypted(self, keys: Iterable[str]) -> None:
        """Refuse these objects when they are stored without the encryption header: their
        (authenticated) manifest says the set is encrypted, so a plaintext object under one
        of these names was put there by someone else."""
        self._encrypted_only.update(keys)

    def _plain(self, key: str) -> None:
        """An object read as it is stored (no encryption header): refused when its set is
        encrypted."""
        if key in self._encrypted_only:
            raise DecryptionFailed(
                f"Object {key!r} is stored in plaintext, but its backup set is encrypted: it "
                "was replaced in storage and will not be used."
            )

    @property
    def encrypts(self) -> bool:
        """Whether new objects are encrypted (a current key is configured)."""
        return self.key_ring.current is not None

    # -- writes -------------------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> StoredObject:
        """Encrypt ``stream`` into the inner store; ``progress`` counts stored bytes and
        ``options`` (e.g. a retention) go to the inner store as they are."""
        current = self.key_ring.current
        if current is None or self.plaintext(key):
            return self.inner.put_stream(key, stream, progress=progress, **options)
        reader = _EncryptingReader(stream, current, key, self.frame_size)
        stored = self.inner.put_stream(
            key, io.BufferedReader(reader, CHUNK_SIZE), progress=progress, **options
        )
        return EncryptedStoredObject(
            key=key,
            size=reader.plain_size,
            sha256=reader.plain_digest.hexdigest(),
            store_checksum=stored.store_checksum,
            stored_size=stored.size,
            stored_sha256=stored.sha256,
            key_id=current.key_id,
            etag=stored.etag,
            version_id=stored.version_id,
        )

    # -- reads --------------------------------------------------------------------------------

    def _aead(self, header: Header, key: str) -> tuple[AESGCM, bytes]:
        master = self.key_ring.get(header.key_id)
        if master is None:
            raise EncryptionKeyMissing(
                f"Object {key!r} is encrypted with key id {header.key_id}, which is not "
                f"configured (configured: {self.key_ring.describe()}); supply that key with "
                f"{HOW_TO_SUPPLY}."
            )
        return AESGCM(master.object_key(header.salt)), _aad(header, key)

    def _locate(self, key: str) -> _Located:
        found = self._located.get(key)
        if found is None:
            size = self.inner.metadata(key).size
            with self.inner.open_read(key, start=0, length=min(size, HEADER_SIZE)) as head:
                header = Header.parse(_read_exact(head, HEADER_SIZE), key)
            found = self._located[key] = _Located(header, size)
        return found

    @contextmanager
    def _open_read(self, key: str, start: int, length: int | None) -> Iterator[BinaryIO]:
        if self.plaintext(key):
            with self.inner.open_read(key, start=start, length=length) as stream:
                yield stream
            return
        if start == 0 and length is None:  # the whole object: look at its first bytes
            with self.inner.open_read(key) as stream:
                head = _read_exact(stream, HEADER_SIZE)
                header = Header.parse(head, key)
                if header is None:
                    self._plain(key)
                    yield io.BufferedReader(_Prefixed(head, stream), CHUNK_SIZE)
                    return
                aead, aad = self._aead(header, key)
                yield io.BufferedReader(
                    _DecryptingReader(stream, aead, aad, header.frame_size, key), CHUNK_SIZE
                )
            return
        located = self._locate(key)
        if located.header is None:
            self._plain(key)
            with self.inner.open_read(key, start=start, length=length) as stream:
                yield stream
            return
        header = located.header
        aead, aad = self._aead(header, key)
        total = plain_size(located.stored_size, header.frame_size, key)
        end = total if length is None else min(total, start + length)
        if start >= end:
            yield io.BytesIO(b"")
            return
        sealed = header.frame_size + TAG_BYTES
        first, last_wanted = start // header.frame_size, (end - 1) // header.frame_size
        last = max(0, -(-total // header.frame_size) - 1)
        offset = HEADER_SIZE + first * sealed
        stop = min(located.stored_size, HEADER_SIZE + (last_wanted + 1) * sealed)
        with self.inner.open_read(key, start=offset, length=stop - offset) as stream:
            yield io.BufferedReader(
                _DecryptingReader(
                    stream,
                    aead,
                    aad,
                    header.frame_size,
                    key,
                    first=first,
                    last=last,
                    skip=start - first * header.frame_size,
                    limit=end - start,
                ),
                CHUNK_SIZE,
            )

    def open_read(
        self, key: str, *, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """The object's plaintext (or ``length`` bytes of it from ``start``: only the
        frames holding them are fetched and decrypted)."""
        return self._open_read(key, start, length)

    def download_to(self, key: str, path: str | os.PathLike[str]) -> StoredObject:
        """Decrypt the object into ``path``; returns the plaintext's size and sha256.

        The inner store's parallel ranged download is kept: ranges of whole frames (about one
        per worker, see :func:`range_span`) are fetched by ``download_workers`` threads,
        each decrypted and written at its plaintext offset, and the sha256 is computed in
        order from the file. One pass, and no ciphertext copy on disk.
        """
        if self.plaintext(key):
            return self.inner.download_to(key, path)
        located = self._locate(key)
        if located.header is None:
            self._plain(key)
            return self.inner.download_to(key, path)
        header = located.header
        self._aead(header, key)  # a missing key fails before anything is fetched
        total = plain_size(located.stored_size, header.frame_size, key)
        workers = int(getattr(self.inner, "download_workers", 1) or 1)
        part = int(getattr(self.inner, "download_part_size", DOWNLOAD_PART_SIZE))
        span = range_span(total, part, workers, align=header.frame_size)
        if workers == 1 or total <= span:
            return ObjectStore.download_to(self, key, path)
        return download_in_ranges(self, key, path, total, span, workers)

    # -- everything else is the inner store's -------------------------------------------------

    def metadata(self, key: str) -> ObjectMetadata:
        return self.inner.metadata(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(
        self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ListedObject]:
        return self.inner.list(prefix, page_size=page_size)

    def delete(self, key: str) -> None:
        self._located.pop(key, None)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._located.clear()
        return self.inner.delete_prefix(prefix)

    def describe(self) -> str:
        return self.inner.describe()


#: The :class:`ObjectStore` methods that touch an object's content: the wrapper's own (or the
#: base's, calling the wrapper's ``put_stream`` / ``open_read``). Every other public attribute
#: of the interface (metadata, listing, deletes, locks, ...) is about what is *stored* and is
#: the inner store's; ``tests/test_object_encryption.py`` fails when the interface grows, so
#: a new content method cannot bypass the encryption unnoticed.
THROUGH_ENCRYPTION = frozenset(
    {"put_stream", "put_bytes", "put_file", "open_read", "read_bytes", "hash_object", "download_to"}
)


def _forwarded(name: str) -> Any:
    if callable(getattr(ObjectStore, name)):

        def method(self: EncryptedObjectStore, *args: Any, **kwargs: Any) -> Any:
            return getattr(self.inner, name)(*args, **kwargs)

        method.__name__ = name
        method.__doc__ = f"The inner store's ``{name}`` (what is stored)."
        return method
    return property(
        lambda self: getattr(self.inner, name),
        lambda self, value: setattr(self.inner, name, value),
        doc=f"The inner store's ``{name}``.",
    )


for _name in dir(ObjectStore):
    if not _name.startswith("_") and _name not in THROUGH_ENCRYPTION:
        if _name not in EncryptedObjectStore.__dict__:
            setattr(EncryptedObjectStore, _name, _forwarded(_name))


def with_encryption(
    store: ObjectStore, key_ring: KeyRing, plaintext: Callable[[str], bool] = never_plain
) -> ObjectStore:
    """``store`` wrapped in an :class:`EncryptedObjectStore` when any key is configured;
    as it is otherwise (nothing to encrypt or decrypt with)."""
    if not key_ring:
        return store
    return EncryptedObjectStore(store, key_ring, plaintext=plaintext)


def key_ring_of(store: ObjectStore) -> KeyRing:
    """The keys a store can decrypt with (an empty ring for a plain store)."""
    ring = store.__dict__.get("key_ring")
    return ring if isinstance(ring, KeyRing) else KeyRing()


def stored_form(store: ObjectStore) -> ObjectStore:
    """The store as it holds the bytes (the ciphertext, for an encrypted store): what
    verification of stored checksums reads."""
    inner = store.__dict__.get("inner")
    return inner if isinstance(inner, ObjectStore) else store


def current_key_id(store: ObjectStore) -> str | None:
    """The id of the key new objects of ``store`` are encrypted with; None: written plain."""
    current = key_ring_of(store).current
    return current.key_id if current is not None else None
