"""The keys of client-side encryption: the scheme's constants, master keys, and the key ring (the
current key and the previous ones a rotation keeps readable).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import Refused

#: What the manifest records as the set's scheme.
SCHEME = "letta-ops/aes-256-gcm-stream@1"
MAGIC = b"LOPSENC\x00"
FORMAT_VERSION = 1
KEY_BYTES = 32
KEY_ID_BYTES = 8
SALT_BYTES = 32
TAG_BYTES = 16
#: magic, version, frame size, key id, salt.
_HEADER = struct.Struct(f">{len(MAGIC)}sBI{KEY_ID_BYTES}s{SALT_BYTES}s")
HEADER_SIZE = _HEADER.size
#: 256 KiB of plaintext per frame: the dump's table of contents (about 130 KB for Letta
#: 0.16, read 256 KiB at first) comes out of one frame, and a 16-byte tag per frame is
#: 0.006 % of the object. Readers take the size from each object's header.
DEFAULT_FRAME_SIZE = 256 * 1024
_MIN_FRAME, _MAX_FRAME = 1024, 64 * 1024 * 1024
_KEY_ID_INFO = b"letta-ops key id v1"
_OBJECT_KEY_INFO = b"letta-ops object key v1"
#: Variables the key ring is read from (besides the store block's fields).
KEY_ENV = "LETTA_OPS_ENCRYPTION_KEY"
KEY_FILE_ENV = "LETTA_OPS_ENCRYPTION_KEY_FILE"
PREVIOUS_KEYS_ENV = "LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS"
HOW_TO_SUPPLY = (
    f"{KEY_ENV}, {PREVIOUS_KEYS_ENV}, --encryption-key-file or the store block's encryption keys"
)


class EncryptionKeyMissing(Refused):
    """An object or set is encrypted with a key the key ring does not hold (or the key
    configuration itself is unusable); the message names the key id and how to supply it."""


class DecryptionFailed(Refused):
    """An encrypted object failed authentication: altered, truncated, reordered or moved in
    storage. Nothing read from it may be used; the message names the object."""


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _hkdf(length: int, salt: bytes | None, info: bytes) -> HKDF:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info)


class MasterKey:
    """A 32-byte master key. Its repr and str show the key id only: a key ring passes
    through Prefect tasks and error messages, and the key must never reach a log."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise EncryptionKeyMissing(
                f"An encryption key must be {KEY_BYTES} bytes; make one with "
                "'letta-ops backups new-key'."
            )
        self._secret = bytes(secret)
        #: A one-way fingerprint (HKDF of the key): safe to record, names the key to supply.
        self.key_id = _hkdf(KEY_ID_BYTES, None, _KEY_ID_INFO).derive(self._secret).hex()

    def object_key(self, salt: bytes) -> bytes:
        """The per-object AES-256 key: HKDF-SHA256 of the master key with the object's salt."""
        return _hkdf(KEY_BYTES, salt, _OBJECT_KEY_INFO).derive(self._secret)

    def derive(self, info: bytes, length: int = KEY_BYTES) -> bytes:
        """A key for another purpose (HKDF-SHA256 with ``info`` naming it), e.g. the MAC key
        of the catalog: one master key, never used twice for two things."""
        return _hkdf(length, None, info).derive(self._secret)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    __str__ = __repr__


def new_key() -> str:
    """A fresh key in the form letta-ops reads: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_key(text: str, source: str) -> MasterKey:
    """Read a base64 key (standard or URL-safe alphabet); ``source`` names where it came
    from in the error, which never echoes the value."""
    value = text.strip()
    try:
        raw = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise EncryptionKeyMissing(
            f"{source} is not a letta-ops encryption key ({KEY_BYTES} random bytes in base64, "
            "44 characters); make one with 'letta-ops backups new-key'."
        )
    return MasterKey(raw)


def _split_keys(text: str) -> list[str]:
    """Keys separated by newlines, commas or spaces; ``#`` starts a comment line."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return [part for line in lines for part in re.split(r"[\s,]+", line) if part]


@dataclass(frozen=True)
class KeyRing:
    """The current key (encrypts new objects; None: new objects stay plain) and every key
    that may decrypt (the current one and those of earlier rotations), by key id."""

    current: MasterKey | None = None
    keys: Mapping[str, MasterKey] = field(default_factory=dict)

    @classmethod
    def of(cls, current: MasterKey | None, previous: Iterable[MasterKey] = ()) -> KeyRing:
        keys = {k.key_id: k for k in previous}
        if current is not None:
            keys[current.key_id] = current
        return cls(current, keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def get(self, key_id: str) -> MasterKey | None:
        return self.keys.get(key_id)

    def describe(self) -> str:
        """Key ids only, for messages: which keys are configured."""
        return ", ".join(sorted(self.keys)) or "none"

    def __repr__(self) -> str:
        current = self.current.key_id if self.current else None
        return f"KeyRing(current={current!r}, keys={sorted(self.keys)!r})"


def load_key_ring(
    block_key: str | None = None,
    block_previous: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> KeyRing:
    """The key ring from a store block's fields and the environment.

    The current key is the block's ``encryption_key``, else ``LETTA_OPS_ENCRYPTION_KEY``, else
    the first key of ``LETTA_OPS_ENCRYPTION_KEY_FILE``; older keys are the block's
    ``previous_encryption_keys``, ``LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS`` and the key file's
    other lines, together. Setting both the variable and the file is refused: which one
    encrypts would be a guess.
    """
    env = os.environ if environ is None else environ
    inline = (env.get(KEY_ENV) or "").strip()
    file_name = (env.get(KEY_FILE_ENV) or "").strip()
    if inline and file_name:
        raise EncryptionKeyMissing(
            f"Both {KEY_ENV} and {KEY_FILE_ENV} are set; keep one of them so it is clear "
            "which key encrypts new backup sets."
        )
    file_keys: list[MasterKey] = []
    if file_name:
        path = Path(file_name).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise EncryptionKeyMissing(
                f"The encryption key file {path} cannot be read ({exc.strerror or exc}); "
                "point --encryption-key-file or LETTA_OPS_ENCRYPTION_KEY_FILE at a readable "
                "file with one base64 key per line, the current one first."
            ) from None
        parts = _split_keys(text)
        if not parts:
            raise EncryptionKeyMissing(
                f"The encryption key file {path} holds no key; put one base64 key per line "
                "in it, the current one first (make one with 'letta-ops backups new-key')."
            )
        file_keys = [parse_key(p, f"Line {i + 1} of key file {path}") for i, p in enumerate(parts)]
    current: MasterKey | None = None
    if block_key and block_key.strip():
        current = parse_key(block_key, "The store block's encryption_key")
    elif inline:
        current = parse_key(inline, KEY_ENV)
    elif file_keys:
        current = file_keys[0]
    previous = [k for k in file_keys if current is None or k.key_id != current.key_id]
    for number, text in enumerate(_split_keys(block_previous or "")):
        previous.append(parse_key(text, f"Key {number + 1} of the block's previous keys"))
    for number, text in enumerate(_split_keys(env.get(PREVIOUS_KEYS_ENV) or "")):
        previous.append(parse_key(text, f"Key {number + 1} of {PREVIOUS_KEYS_ENV}"))
    return KeyRing.of(current, previous)
