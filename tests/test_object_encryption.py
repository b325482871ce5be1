"""Client-side encryption of backup objects (tasks/store/encryption.py).

The format's promises, each tried against what an attacker with write access to the store can
do: round trips across frame boundaries, ranged reads, truncation, a flipped byte, swapped
frames, an object moved to another key, a wrong key, a key rotation, and memory that stays
flat for a large stream. Most run on a local directory with small frames (many frames per
test); the ranged parallel download and the multipart upload run on moto.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from letta_ops.tasks.audit import store as audit_store
from letta_ops.tasks.sets import manifest as backup_manifest
from letta_ops.tasks.sets.admission import missing_key, require_key
from letta_ops.tasks.sets.manifest import (
    ManifestObject,
    SetEncryption,
    stays_plaintext,
)
from letta_ops.tasks.sets.verification import check_objects
from letta_ops.tasks.store.encryption import (
    THROUGH_ENCRYPTION,
    EncryptedObjectStore,
    EncryptedStoredObject,
    key_ring_of,
    stored_form,
    with_encryption,
)
from letta_ops.tasks.store.encryption_frames import encrypted_size, plain_size
from letta_ops.tasks.store.encryption_keys import (
    HEADER_SIZE,
    SCHEME,
    TAG_BYTES,
    DecryptionFailed,
    EncryptionKeyMissing,
    KeyRing,
    load_key_ring,
    new_key,
    parse_key,
)
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.locations import with_object_lock
from letta_ops.tasks.store.objects import MiB, ObjectStore
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest
from tests.test_object_store import GeneratedStream

FRAME = 1024  # small frames: every test crosses many boundaries
KEY = new_key()
OTHER_KEY = new_key()


def ring(*keys: str) -> KeyRing:
    """The first key current, the others older."""
    parsed = [parse_key(k, "test key") for k in keys]
    return KeyRing.of(parsed[0] if parsed else None, parsed[1:])


def encrypted(root: Path, *keys: str, frame: int = FRAME) -> EncryptedObjectStore:
    return EncryptedObjectStore(
        LocalObjectStore(root), ring(*keys), plaintext=stays_plaintext, frame_size=frame
    )


def raw_path(root: Path, key: str) -> Path:
    return root.joinpath(*key.split("/"))


def rewrite(root: Path, key: str, data: bytes) -> None:
    """What an attacker (or bit rot) with access to the store does: replace the bytes."""
    path = raw_path(root, key)
    path.chmod(0o600)
    path.write_bytes(data)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME, 3 * FRAME + 17, 10 * FRAME - 1]
)
def test_round_trip_across_frame_boundaries(tmp_path: Path, size: int) -> None:
    store = encrypted(tmp_path, KEY)
    data = os.urandom(size)
    stored = store.put_bytes("srv/set/agents/a.af", data)

    assert isinstance(stored, EncryptedStoredObject)
    assert (stored.size, stored.sha256) == (size, hashlib.sha256(data).hexdigest())
    on_disk = raw_path(tmp_path, "srv/set/agents/a.af").read_bytes()
    assert stored.stored_size == len(on_disk) == encrypted_size(size, FRAME)
    assert stored.stored_sha256 == hashlib.sha256(on_disk).hexdigest()
    assert plain_size(len(on_disk), FRAME) == size
    assert stored.key_id == parse_key(KEY, "k").key_id
    if size >= 16:
        assert data not in on_disk and data[:16] not in on_disk  # no plaintext stored
    assert store.read_bytes("srv/set/agents/a.af") == data
    assert store.hash_object("srv/set/agents/a.af").sha256 == stored.sha256
    fetched = store.download_to("srv/set/agents/a.af", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data and fetched.sha256 == stored.sha256


def test_ranged_reads_decrypt_only_the_frames_they_need(tmp_path: Path) -> None:
    store = encrypted(tmp_path, KEY)
    data = os.urandom(5 * FRAME + 300)
    store.put_bytes("srv/set/database.dump", data)
    for start in (0, 1, FRAME - 1, FRAME, 2 * FRAME + 5, len(data) - 1, len(data), len(data) + 9):
        for length in (None, 0, 1, 100, FRAME, 3 * FRAME + 1, 10 * FRAME):
            with store.open_read("srv/set/database.dump", start=start, length=length) as stream:
                got = stream.read()
            want = data[start:] if length is None else data[start : start + length]
            assert got == want, (start, length)


def test_catalog_objects_stay_plain_and_content_is_encrypted(tmp_path: Path) -> None:
    store = encrypted(tmp_path, KEY)
    plain = {
        "srv/20261123T021500Z-abcd1234/manifest.json",
        "srv/20261123T021500Z-abcd1234/pin.json",
        "srv/20261123T021500Z-abcd1234/verifications/1.json",
        "srv/20261123T021500Z-abcd1234/audit/run.json",
        "srv/20261123T021500Z-abcd1234/journal/run/0001-start.json",
        "audit/srv--20261123T021500Z--run.json",
    }
    secret = {
        "srv/20261123T021500Z-abcd1234/database.dump",
        "srv/20261123T021500Z-abcd1234/agents/agent-1.af",
        "srv/20261123T021500Z-abcd1234/runtime/compose.yaml",
        "audit/20261123T021500Z-abcd1234/database.dump",  # a server named "audit"
        "srv/20261123T021500Z-abcd1234/agents/manifest.json",
    }
    for key in plain | secret:
        store.put_bytes(key, b'{"hello": "world"}')
    for key in plain:
        assert raw_path(tmp_path, key).read_bytes() == b'{"hello": "world"}', key
    for key in secret:
        assert b"hello" not in raw_path(tmp_path, key).read_bytes(), key
        assert store.read_bytes(key) == b'{"hello": "world"}'


def test_plaintext_names_follow_the_audit_and_manifest_modules() -> None:
    assert audit_store.SET_AUDIT_DIR in backup_manifest.PLAINTEXT_DIRS
    assert audit_store.STORE_AUDIT_DIR == backup_manifest.STORE_AUDIT_DIR
    assert backup_manifest.VERIFY_DIR in backup_manifest.PLAINTEXT_DIRS
    assert backup_manifest.MANIFEST_NAME in backup_manifest.PLAINTEXT_FILES


def test_plain_objects_written_before_encryption_stay_readable(tmp_path: Path) -> None:
    LocalObjectStore(tmp_path).put_bytes("srv/old/database.dump", b"PGDMP old plain dump")
    store = encrypted(tmp_path, KEY)
    assert store.read_bytes("srv/old/database.dump") == b"PGDMP old plain dump"
    with store.open_read("srv/old/database.dump", start=6, length=3) as stream:
        assert stream.read() == b"old"
    store.download_to("srv/old/database.dump", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"PGDMP old plain dump"


# --- tampering ----------------------------------------------------------------------------------


def _sealed(tmp_path: Path, size: int = 4 * FRAME + 10) -> tuple[EncryptedObjectStore, bytes]:
    store = encrypted(tmp_path, KEY)
    store.put_bytes("srv/set/database.dump", os.urandom(size))
    return store, raw_path(tmp_path, "srv/set/database.dump").read_bytes()


def _refused(store: ObjectStore, key: str = "srv/set/database.dump") -> str:
    with pytest.raises(DecryptionFailed) as caught:
        store.read_bytes(key)
    message = str(caught.value)
    assert key in message and "\n" not in message
    return message


@pytest.mark.parametrize("where", ["header", "first frame", "middle", "last tag", "last byte"])
def test_a_flipped_byte_is_refused(tmp_path: Path, where: str) -> None:
    store, body = _sealed(tmp_path)
    offset = {
        "header": HEADER_SIZE - 1,  # the salt: authenticated as associated data
        "first frame": HEADER_SIZE + 3,
        "middle": len(body) // 2,
        "last tag": len(body) - TAG_BYTES,
        "last byte": len(body) - 1,
    }[where]
    altered = bytearray(body)
    altered[offset] ^= 0x01
    rewrite(tmp_path, "srv/set/database.dump", bytes(altered))
    assert "failed authentication" in _refused(store)
    with pytest.raises(DecryptionFailed):
        store.download_to("srv/set/database.dump", tmp_path / "out")


@pytest.mark.parametrize("cut", ["at a frame boundary", "inside a frame", "all frames"])
def test_truncation_is_refused(tmp_path: Path, cut: str) -> None:
    store, body = _sealed(tmp_path)
    sealed = FRAME + TAG_BYTES
    length = {
        "at a frame boundary": HEADER_SIZE + 2 * sealed,
        "inside a frame": HEADER_SIZE + 2 * sealed + 100,
        "all frames": HEADER_SIZE,
    }[cut]
    rewrite(tmp_path, "srv/set/database.dump", body[:length])
    _refused(store)
    # A ranged read authenticates the frames it reads: here the end of what is left.
    fresh = encrypted(tmp_path, KEY)  # a new store: no remembered size
    with pytest.raises(DecryptionFailed):
        with fresh.open_read("srv/set/database.dump", start=2 * FRAME - 10, length=FRAME) as s:
            s.read()


def test_swapped_frames_appended_bytes_and_moved_objects_are_refused(tmp_path: Path) -> None:
    store, body = _sealed(tmp_path)
    sealed = FRAME + TAG_BYTES
    frames = [body[HEADER_SIZE + i * sealed : HEADER_SIZE + (i + 1) * sealed] for i in range(5)]
    swapped = body[:HEADER_SIZE] + frames[1] + frames[0] + b"".join(frames[2:])
    rewrite(tmp_path, "srv/set/database.dump", swapped)
    _refused(store)

    rewrite(tmp_path, "srv/set/database.dump", body + frames[0])  # a frame appended
    _refused(encrypted(tmp_path, KEY))

    # A valid object of the same key, moved to another name, does not decrypt there.
    rewrite(tmp_path, "srv/set/database.dump", body)
    LocalObjectStore(tmp_path).put_bytes("srv/set/agents/a.af", body)
    _refused(store, "srv/set/agents/a.af")
    assert len(store.read_bytes("srv/set/database.dump")) == 4 * FRAME + 10


# --- keys -----------------------------------------------------------------------------------------


def test_wrong_or_missing_key_names_the_key_id(tmp_path: Path) -> None:
    store = encrypted(tmp_path, KEY)
    store.put_bytes("srv/set/database.dump", b"x" * 5000)
    key_id = parse_key(KEY, "k").key_id
    for reader in (encrypted(tmp_path, OTHER_KEY), encrypted(tmp_path, OTHER_KEY, frame=2048)):
        with pytest.raises(EncryptionKeyMissing, match=key_id) as caught:
            reader.read_bytes("srv/set/database.dump")
        assert "\n" not in str(caught.value) and "LETTA_OPS_ENCRYPTION_KEY" in str(caught.value)
        with pytest.raises(EncryptionKeyMissing, match=key_id):
            reader.download_to("srv/set/database.dump", tmp_path / "out")
        assert not (tmp_path / "out").exists()  # refused before anything was fetched


def test_rotation_new_sets_use_the_new_key_old_sets_stay_readable(tmp_path: Path) -> None:
    encrypted(tmp_path, KEY).put_bytes("srv/old/database.dump", b"old set")
    rotated = encrypted(tmp_path, OTHER_KEY, KEY)
    new = rotated.put_bytes("srv/new/database.dump", b"new set")
    assert new.key_id == parse_key(OTHER_KEY, "k").key_id
    assert rotated.read_bytes("srv/old/database.dump") == b"old set"
    assert rotated.read_bytes("srv/new/database.dump") == b"new set"
    with pytest.raises(EncryptionKeyMissing):
        encrypted(tmp_path, OTHER_KEY).read_bytes("srv/old/database.dump")
    # Encryption turned off, old keys still listed: new objects plain, old ones readable.
    reading_only = EncryptedObjectStore(
        LocalObjectStore(tmp_path), KeyRing.of(None, [parse_key(KEY, "k")])
    )
    reading_only.put_bytes("srv/plain/database.dump", b"plain")
    assert raw_path(tmp_path, "srv/plain/database.dump").read_bytes() == b"plain"
    assert reading_only.read_bytes("srv/old/database.dump") == b"old set"


def test_key_format_and_sources(tmp_path: Path) -> None:
    key = parse_key(KEY, "k")
    assert len(key.key_id) == 16 and key.key_id not in KEY
    assert KEY not in repr(key) and KEY not in repr(ring(KEY)) and KEY not in str(key)
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(KEY)).decode()
    assert parse_key(urlsafe, "k").key_id == key.key_id
    for bad in ("", "not base64!", base64.b64encode(os.urandom(16)).decode(), KEY[:-4]):
        with pytest.raises(EncryptionKeyMissing) as caught:
            parse_key(bad, "LETTA_OPS_ENCRYPTION_KEY")
        assert "LETTA_OPS_ENCRYPTION_KEY is not a letta-ops encryption key" in str(caught.value)
        assert (bad or "\x00") not in str(caught.value)

    assert not load_key_ring(environ={})
    inline = load_key_ring(environ={"LETTA_OPS_ENCRYPTION_KEY": KEY})
    assert inline.current is not None and inline.current.key_id == key.key_id
    key_file = tmp_path / "keys"
    key_file.write_text(f"# current\n{OTHER_KEY}\n\n{KEY}  # before the rotation\n")
    from_file = load_key_ring(environ={"LETTA_OPS_ENCRYPTION_KEY_FILE": str(key_file)})
    assert from_file.current.key_id == parse_key(OTHER_KEY, "k").key_id
    assert set(from_file.keys) == {key.key_id, parse_key(OTHER_KEY, "k").key_id}
    third = new_key()
    block = load_key_ring(
        third, f"{KEY},{OTHER_KEY}", environ={"LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS": KEY}
    )
    assert block.current.key_id == parse_key(third, "k").key_id and len(block.keys) == 3

    with pytest.raises(EncryptionKeyMissing, match="Both"):
        load_key_ring(
            environ={"LETTA_OPS_ENCRYPTION_KEY": KEY, "LETTA_OPS_ENCRYPTION_KEY_FILE": "/x"}
        )
    with pytest.raises(EncryptionKeyMissing, match="cannot be read"):
        load_key_ring(environ={"LETTA_OPS_ENCRYPTION_KEY_FILE": str(tmp_path / "missing")})
    key_file.write_text(f"{OTHER_KEY}\nnot-a-key\n")
    with pytest.raises(EncryptionKeyMissing, match="Line 2 of key file") as caught:
        load_key_ring(environ={"LETTA_OPS_ENCRYPTION_KEY_FILE": str(key_file)})
    assert OTHER_KEY not in str(caught.value)


def test_store_blocks_keep_the_keys_secret(tmp_path: Path) -> None:
    from letta_ops.blocks.backup_store import (
        LocalBackupStore,
        S3BackupStore,
        with_store_encryption,
    )

    s3 = S3BackupStore(bucket="b", encryption_key=KEY, previous_encryption_keys=OTHER_KEY)
    local = LocalBackupStore(path=tmp_path, encryption_key=KEY)
    for block in (s3, local):
        assert KEY not in repr(block) and KEY not in block.model_dump_json()
    store = with_store_encryption(local.object_store(), local, environ={})
    assert isinstance(store, EncryptedObjectStore) and store.encrypts
    plain = with_store_encryption(LocalBackupStore(path=tmp_path).object_store(), None, {})
    assert isinstance(plain, LocalObjectStore)  # no key anywhere: the store as it was


# --- the store around the flows ---------------------------------------------------------------


def test_every_interface_method_is_either_encrypted_or_forwarded() -> None:
    """A method added to ObjectStore must be sorted here: through the encryption (content) or
    forwarded to the inner store (what is stored). Forwarding content would store plaintext."""
    public = {n for n in dir(ObjectStore) if not n.startswith("_")}
    stored_facts = {
        "metadata",
        "exists",
        "list",
        "delete",
        "delete_prefix",
        "describe",
        "retention",
        "bucket_lock",
        "active_lock",
        "repository_keys",
        "pin_reads",
    }
    assert public <= THROUGH_ENCRYPTION | stored_facts, public - THROUGH_ENCRYPTION - stored_facts


def test_memory_stays_flat_for_a_large_stream(tmp_path: Path) -> None:
    store = EncryptedObjectStore(LocalObjectStore(tmp_path), ring(KEY))  # default frames
    size = 48 * MiB
    tracemalloc.start()
    try:
        stored = store.put_stream("srv/set/database.dump", GeneratedStream(size))
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        with store.open_read("srv/set/database.dump") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (stored.size, stored.sha256) == GeneratedStream.expected(size)
    assert digest.hexdigest() == stored.sha256
    assert upload_peak < 8 * MiB and read_peak < 8 * MiB, (upload_peak, read_peak)


def test_s3_multipart_upload_and_parallel_ranged_download(s3_bucket, tmp_path: Path) -> None:
    client, bucket, _ = s3_bucket
    inner = S3ObjectStore(
        client, bucket, "backups", part_size=5 * MiB, download_part_size=MiB, download_workers=3
    )
    store = EncryptedObjectStore(inner, ring(KEY), plaintext=stays_plaintext)
    size = 11 * MiB + 12345
    stored = store.put_stream("srv/set/database.dump", GeneratedStream(size))
    assert (stored.size, stored.sha256) == GeneratedStream.expected(size)
    assert stored.store_checksum is not None and stored.store_checksum.type == "COMPOSITE"
    assert inner.metadata("srv/set/database.dump").size == stored.stored_size

    fetched = store.download_to("srv/set/database.dump", tmp_path / "dump")
    assert (fetched.size, fetched.sha256) == (size, stored.sha256)
    assert hashlib.sha256((tmp_path / "dump").read_bytes()).hexdigest() == stored.sha256

    # A locked (or otherwise rebuilt) store keeps the encryption around it.
    relocked = with_object_lock(store, None)
    assert isinstance(relocked, EncryptedObjectStore) and relocked.key_ring is store.key_ring


def test_verification_without_the_key_checks_what_is_stored(tmp_path: Path) -> None:
    store = encrypted(tmp_path, KEY)
    objects = {}
    for key, data in (("srv/set/database.dump", os.urandom(3000)), ("srv/set/agents/a.af", b"{}")):
        o = store.put_bytes(key, data)
        objects[key] = ManifestObject(
            size=o.size, sha256=o.sha256, stored_size=o.stored_size, stored_sha256=o.stored_sha256
        )
    manifest = hand_made_manifest(
        "20261123T021500Z-abcd1234",
        "srv",
        "srv/set/database.dump",
        objects,
        completed_at="2026-11-23T02:16:00Z",
        alembic_revision=None,
        postgres_version="18",
        pgvector_version=None,
        encryption=SetEncryption(scheme=SCHEME, key_id=parse_key(KEY, "k").key_id),
    )
    as_json = json.loads(manifest.to_json())
    assert as_json["encryption"]["key_id"] == parse_key(KEY, "k").key_id
    assert KEY not in manifest.to_json().decode()

    no_key = LocalObjectStore(tmp_path)
    assert check_objects(no_key, manifest) == [] == check_objects(store, manifest, read_data=True)
    assert "no encryption key is configured" in missing_key(no_key, manifest)
    wrong = encrypted(tmp_path, OTHER_KEY)
    with pytest.raises(EncryptionKeyMissing, match=parse_key(KEY, "k").key_id):
        require_key(wrong, manifest)
    require_key(store, manifest)
    assert stored_form(store) is store.inner and key_ring_of(no_key) == KeyRing()

    body = bytearray(raw_path(tmp_path, "srv/set/database.dump").read_bytes())
    body[100] ^= 0x01
    rewrite(tmp_path, "srv/set/database.dump", bytes(body))
    [problem] = check_objects(no_key, manifest)
    assert problem == {
        "object": "srv/set/database.dump",
        "problem": "sha256 differs from the manifest",
    }


def test_with_encryption_leaves_a_store_without_keys_alone(tmp_path: Path) -> None:
    plain = LocalObjectStore(tmp_path)
    assert with_encryption(plain, KeyRing()) is plain
    wrapped = with_encryption(plain, ring(KEY))
    assert isinstance(wrapped, EncryptedObjectStore) and wrapped.describe() == plain.describe()
    assert wrapped.root == plain.root  # everything else is the inner store's
    assert KEY not in repr(wrapped)
    stream = io.BytesIO(b"abc")
    assert wrapped.put_stream("srv/set/x", stream).size == 3
