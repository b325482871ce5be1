"""The encrypted object format: a header, then AES-256-GCM frames whose nonces and associated data
bind each frame to its place and its object.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .encryption_keys import (
    _HEADER,
    _MAX_FRAME,
    _MIN_FRAME,
    DEFAULT_FRAME_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    SALT_BYTES,
    TAG_BYTES,
    DecryptionFailed,
    MasterKey,
)

# --------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """An encrypted object's header, as stored (``raw``) and parsed."""

    raw: bytes
    frame_size: int
    key_id: str
    salt: bytes

    @classmethod
    def new(cls, key: MasterKey, frame_size: int) -> Header:
        salt = secrets.token_bytes(SALT_BYTES)
        raw = _HEADER.pack(MAGIC, FORMAT_VERSION, frame_size, bytes.fromhex(key.key_id), salt)
        return cls(raw, frame_size, key.key_id, salt)

    @classmethod
    def parse(cls, raw: bytes, name: str) -> Header | None:
        """The header at the start of ``raw``; None when the object is not encrypted (no
        magic). A damaged header of an encrypted object is refused."""
        if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
            return None
        _, version, frame_size, key_id, salt = _HEADER.unpack(raw[:HEADER_SIZE])
        if version != FORMAT_VERSION or not _MIN_FRAME <= frame_size <= _MAX_FRAME:
            raise DecryptionFailed(
                f"Object {name!r} has an encryption header of unknown version {version} or "
                f"frame size {frame_size}; it was damaged or written by a newer letta-ops, "
                "and will not be used."
            )
        return cls(raw[:HEADER_SIZE], frame_size, key_id.hex(), salt)


def encrypted_size(plain_size: int, frame_size: int = DEFAULT_FRAME_SIZE) -> int:
    """Bytes stored for ``plain_size`` bytes of plaintext: the header and one tag per frame
    (at least one frame: an empty object is one empty final frame)."""
    frames = max(1, -(-plain_size // frame_size))
    return HEADER_SIZE + plain_size + frames * TAG_BYTES


def plain_size(stored_size: int, frame_size: int, name: str = "object") -> int:
    """The plaintext size of an encrypted object from its stored size alone."""
    body = stored_size - HEADER_SIZE
    full, rest = divmod(body, frame_size + TAG_BYTES)
    if body < TAG_BYTES or (rest and rest < TAG_BYTES):
        raise DecryptionFailed(
            f"Object {name!r} is {stored_size} bytes, which no encrypted object can be; it was "
            "truncated or altered in storage and will not be used."
        )
    return full * frame_size + (rest - TAG_BYTES if rest else 0)


def _nonce(index: int, final: bool) -> bytes:
    """96 bits: the frame index (88 bits) and the final flag. Unique per object key."""
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _aad(header: Header, name: str) -> bytes:
    """Associated data of every frame: the header and the object's key in the store."""
    return header.raw + name.encode()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, looping over short reads; fewer only at the end."""
    parts: list[bytes] = []
    have = 0
    while have < size:
        chunk = stream.read(size - have)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _EncryptingReader(io.RawIOBase):
    """Reads as the encrypted form of ``source``: the header, then sealed frames.

    One frame of plaintext is read ahead to know which frame is the last (the final flag);
    the plaintext's sha256 and size are computed on the way, for the manifest.
    """

    def __init__(self, source: BinaryIO, key: MasterKey, name: str, frame_size: int) -> None:
        self.source = source
        self.header = Header.new(key, frame_size)
        self.aead = AESGCM(key.object_key(self.header.salt))
        self.aad = _aad(self.header, name)
        self.frame_size = frame_size
        self.plain_digest = hashlib.sha256()
        self.plain_size = 0
        self.index = 0
        self.finished = False
        self.pending = memoryview(self.header.raw)
        self.ahead = self._next_plain()

    def _next_plain(self) -> bytes:
        data = _read_exact(self.source, self.frame_size)
        self.plain_digest.update(data)
        self.plain_size += len(data)
        return data

    def _seal_next(self) -> None:
        current = self.ahead
        self.ahead = self._next_plain() if len(current) == self.frame_size else b""
        final = not self.ahead
        sealed = self.aead.encrypt(_nonce(self.index, final), current, self.aad)
        self.index += 1
        self.finished = final
        self.pending = memoryview(sealed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.finished:
            self._seal_next()
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


class _DecryptingReader(io.RawIOBase):
    """Reads as the plaintext of sealed frames from ``source`` (positioned at frame
    ``first``), skipping ``skip`` bytes of the first frame and stopping after ``limit``.

    With ``last`` (the object's last frame index, known from its size) frames are read as
    they come; without it, one frame is read ahead to know which one is final, and bytes
    after the final frame fail authentication too.
    """

    def __init__(
        self,
        source: BinaryIO,
        aead: AESGCM,
        aad: bytes,
        frame_size: int,
        name: str,
        *,
        first: int = 0,
        last: int | None = None,
        skip: int = 0,
        limit: int | None = None,
    ) -> None:
        self.source = source
        self.aead = aead
        self.aad = aad
        self.sealed_size = frame_size + TAG_BYTES
        self.name = name
        self.index = first
        self.last = last
        self.skip = skip
        self.remaining = limit
        self.finished = False
        self.pending = memoryview(b"")
        self.ahead = _read_exact(source, self.sealed_size) if last is None else b""

    def _fail(self, why: str) -> DecryptionFailed:
        return DecryptionFailed(
            f"Object {self.name!r} failed authentication at frame {self.index} ({why}): it was "
            "altered, truncated or reordered in storage, or written with another key of the "
            "same id, and will not be used."
        )

    def _open_next(self) -> None:
        if self.last is None:
            sealed = self.ahead
            self.ahead = (
                _read_exact(self.source, self.sealed_size)
                if len(sealed) == self.sealed_size
                else b""
            )
            final = not self.ahead
        else:
            sealed = _read_exact(self.source, self.sealed_size)
            final = self.index == self.last
            if not final and len(sealed) != self.sealed_size:
                raise self._fail("the object ends inside it")
        if len(sealed) < TAG_BYTES:
            raise self._fail("the object ends before its final frame")
        try:
            plain = self.aead.decrypt(_nonce(self.index, final), sealed, self.aad)
        except InvalidTag:
            raise self._fail("the tag does not match") from None
        self.index += 1
        self.finished = final
        view = memoryview(plain)[self.skip :]
        self.skip = 0
        if self.remaining is not None:
            view = view[: self.remaining]
            self.remaining -= len(view)
            if self.remaining == 0:
                self.finished = True
        self.pending = view

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.finished:
            self._open_next()
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream``: a plain object whose first bytes were read to
    look for the encryption header."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head = memoryview(head)
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            count = min(len(buffer), len(self.head))
            buffer[:count] = self.head[:count]
            self.head = self.head[count:]
            return count
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
