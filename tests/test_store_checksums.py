"""Verification proportional to what must be read, and restores that download in parallel.

Against a real moto S3 server on loopback and a real pg_dump archive: the SHA-256 the store
keeps is recorded at upload (single PUT and multipart), a metadata request is enough to verify
a set and still catches an object rewritten behind letta-ops' back, ``read_data`` reads every
object again, the dump's table of contents is read without the rest of the dump, and a large
object is downloaded in parallel byte ranges and checked against its sha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from letta_ops.tasks.postgres.client_tools import PgToolError
from letta_ops.tasks.postgres.database import default_pg_bin_dir
from letta_ops.tasks.postgres.dump import dump_to_store
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.sets.manifest import (
    AgentEntry,
    BackupManifest,
    ManifestObject,
    agent_file_key,
    set_prefix,
)
from letta_ops.tasks.sets.verification import (
    TOC_FIRST_READ,
    check_dump,
    check_objects,
    downloaded,
    drill,
    read_dump_toc,
)
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.objects import MiB, StoreChecksum, StoredObject
from letta_ops.tasks.store.ranged_reads import range_span
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest
from tests.test_object_store import GeneratedStream

PART_SIZE = 5 * MiB
PREFIX = "backups"
SET_ID = "20261123T021500Z-checksum"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Calls:
    """Every GetObject and HeadObject the store sends, with its key, range and thread."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, str, str | None, str]] = []
        self._lock = threading.Lock()
        for operation in ("GetObject", "HeadObject"):
            client.meta.events.register(f"provide-client-params.s3.{operation}", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self._lock:
            self.calls.append(
                (model.name, params["Key"], params.get("Range"), threading.current_thread().name)
            )

    def clear(self) -> None:
        self.calls.clear()

    def of(self, operation: str) -> list[tuple[str, str | None, str]]:
        return [(key, rng, thread) for op, key, rng, thread in self.calls if op == operation]


@pytest.fixture
def s3(s3_bucket: tuple[Any, str, str]) -> tuple[S3ObjectStore, Any, S3Calls]:
    client, bucket, _endpoint = s3_bucket
    store = S3ObjectStore(
        client, bucket, PREFIX, part_size=PART_SIZE, download_part_size=MiB, download_workers=4
    )
    return store, client, S3Calls(client)


def _raw_head(store: S3ObjectStore, key: str) -> dict[str, Any]:
    return store.client.head_object(
        Bucket=store.bucket, Key=f"{PREFIX}/{key}", ChecksumMode="ENABLED"
    )


# --------------------------------------------------------------------------------------------
# The checksum the store keeps, recorded at upload
# --------------------------------------------------------------------------------------------


def test_a_single_upload_keeps_the_full_object_sha256(s3) -> None:
    store, _client, _calls = s3
    data = b"agent file \x00\xff" * 1000

    stored = store.put_bytes("srv/agent.af", data)

    expected = _b64(hashlib.sha256(data).digest())
    assert stored.store_checksum == StoreChecksum("SHA256", "FULL_OBJECT", expected)
    assert _raw_head(store, "srv/agent.af")["ChecksumSHA256"] == expected
    assert stored.store_checksum.matches(store.metadata("srv/agent.af").store_checksum)


def test_a_multipart_upload_keeps_the_composite_sha256_of_its_parts(s3) -> None:
    store, _client, _calls = s3
    size = 2 * PART_SIZE + 12_345  # three parts, the last one short
    content = GeneratedStream(size).read()
    part_digests = [
        hashlib.sha256(content[start : start + PART_SIZE]).digest()
        for start in range(0, size, PART_SIZE)
    ]

    stored = store.put_stream("srv/database.dump", GeneratedStream(size))

    composite = _b64(hashlib.sha256(b"".join(part_digests)).digest())
    assert stored.store_checksum == StoreChecksum("SHA256", "COMPOSITE", composite)
    assert stored.sha256 == hashlib.sha256(content).hexdigest()  # ours stays whole-object
    head = _raw_head(store, "srv/database.dump")
    assert head["ChecksumSHA256"].partition("-")[0] == composite
    assert head["ChecksumType"] == "COMPOSITE"
    assert head["ETag"].strip('"').endswith("-3")


def test_a_store_that_keeps_no_checksum_records_none(s3) -> None:
    """Stores that ignore checksum headers: nothing is recorded, verification re-reads."""
    store, client, _calls = s3

    def drop_checksums(params: dict[str, Any], **_: Any) -> None:
        for name in [n for n in params if n.startswith("Checksum")]:
            del params[name]

    client.meta.events.register("provide-client-params.s3.PutObject", drop_checksums)

    stored = store.put_bytes("srv/plain", b"no checksum here")

    assert stored.store_checksum is None and store.keeps_checksums is False


# --------------------------------------------------------------------------------------------
# Verifying a set: metadata by default, everything with read_data
# --------------------------------------------------------------------------------------------


def _real_dump(make_database, store: S3ObjectStore, key: str) -> StoredObject:
    """A real custom-format pg_dump of a table of ~6 MiB random bytes: a multipart object."""
    db = make_database("checksums").model_copy(update={"extra_tables": ["ballast"]})
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE ballast (id int PRIMARY KEY, payload bytea)"))
        conn.execute(
            sa.text(
                "INSERT INTO ballast SELECT i, decode(repeat(md5(i::text), 2048), 'hex') "
                "FROM generate_series(1, 200) i"
            )
        )
    return dump_to_store(db, store, key, compression="none").stored


def _write_set(store: S3ObjectStore, make_database) -> BackupManifest:
    prefix = set_prefix("prod", SET_ID)
    stored = [
        store.put_bytes(agent_file_key(prefix, f"agent-{i}"), f"agent {i}".encode() * 500)
        for i in range(3)
    ]
    dump = _real_dump(make_database, store, prefix + "database.dump")
    now = datetime.now(UTC)
    return hand_made_manifest(
        SET_ID,
        "prod",
        dump.key,
        {
            o.key: ManifestObject(size=o.size, sha256=o.sha256, store_checksum=o.store_checksum)
            for o in [*stored, dump]
        },
        created_at=now,
        alembic_revision=None,
        postgres_version="18",
        pgvector_version=None,
        row_counts={"ballast": 200},
        agents=[
            AgentEntry(id=f"agent-{i}", name=f"a{i}", file=o.key) for i, o in enumerate(stored)
        ],
    )


@pytest.fixture
def backup_set(s3, make_database) -> tuple[S3ObjectStore, Any, S3Calls, BackupManifest]:
    store, client, calls = s3
    manifest = _write_set(store, make_database)
    manifest = BackupManifest.from_json(manifest.to_json())  # as verify loads it
    calls.clear()
    return store, client, calls, manifest


def test_default_verification_reads_metadata_and_the_dump_toc_only(backup_set) -> None:
    store, _client, calls, manifest = backup_set
    dump = manifest.objects[manifest.dump]
    assert dump.size > 2 * PART_SIZE and dump.store_checksum.type == "COMPOSITE"
    assert all(o.store_checksum for o in manifest.objects.values())

    assert check_objects(store, manifest) == []
    assert calls.of("GetObject") == []
    assert sorted(key for key, _, _ in calls.of("HeadObject")) == sorted(
        f"{PREFIX}/{k}" for k in manifest.objects
    )

    calls.clear()
    result = check_dump(store, manifest)
    assert result["tables_missing"] == [] and result["tables_with_data"] == 1
    assert result["bytes_read"] == TOC_FIRST_READ < dump.size
    assert calls.of("GetObject") == [
        (f"{PREFIX}/{manifest.dump}", f"bytes=0-{TOC_FIRST_READ - 1}", "MainThread")
    ]


def test_a_toc_longer_than_the_first_read_is_read_in_growing_prefixes(
    backup_set, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _client, calls, manifest = backup_set
    monkeypatch.setattr("letta_ops.tasks.sets.verification.TOC_FIRST_READ", 512)

    result = check_dump(store, manifest)

    assert result["tables_missing"] == [] and result["tables_with_data"] == 1
    ranges = [rng for _, rng, _ in calls.of("GetObject")]
    assert ranges[:2] == ["bytes=0-511", "bytes=512-2047"]  # then four times more each time
    assert result["bytes_read"] < manifest.objects[manifest.dump].size


def test_a_plaintext_drill_downloads_the_whole_dump_before_any_sql(
    backup_set, make_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plaintext set has nothing that authenticates its bytes as they arrive: the drill
    fetches every byte of the dump (in parallel ranges) and compares the sha256 before
    pg_restore runs. (An encrypted set streams: each frame is authenticated on arrival, see
    tests/test_encryption_e2e.py.)"""
    store, _client, calls, manifest = backup_set
    monkeypatch.setattr("letta_ops.tasks.sets.verification.TOC_FIRST_READ", 512)

    result = drill(store, manifest, make_database("drill_target"), jobs=2)

    assert result["differences"] == [] and result["tables"] == 1
    gets = calls.of("GetObject")
    assert {key for key, _, _ in gets} == {f"{PREFIX}/{manifest.dump}"}
    covered = sorted(tuple(map(int, rng.removeprefix("bytes=").split("-"))) for _, rng, _ in gets)
    assert covered[0][0] == 0 and covered[-1][1] == manifest.objects[manifest.dump].size - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))


def test_read_data_reads_every_object_again(backup_set) -> None:
    store, _client, calls, manifest = backup_set

    assert check_objects(store, manifest, read_data=True) == []

    fetched = Counter(key for key, rng, _ in calls.of("GetObject") if rng is None)
    assert fetched == Counter(f"{PREFIX}/{k}" for k in manifest.objects)
    assert calls.of("HeadObject") == []


def test_a_set_recorded_without_store_checksums_is_read_back(backup_set) -> None:
    """Sets written before the store checksum was recorded still verify, by reading."""
    store, _client, calls, manifest = backup_set
    old = BackupManifest.from_json(
        manifest.to_json().replace(b'"store_checksum"', b'"not_a_field"')
    )
    assert all(o.store_checksum is None for o in old.objects.values())

    assert check_objects(store, old) == []
    assert len(calls.of("GetObject")) == len(old.objects)


@pytest.mark.parametrize("with_checksum", [False, True], ids=["plain-put", "put-with-sha256"])
def test_an_object_rewritten_behind_our_back_fails_without_read_data(
    backup_set, with_checksum: bool
) -> None:
    """Same size, one byte flipped, uploaded straight to the bucket: the store's checksum
    changes (or disappears), so the metadata check alone catches it."""
    store, client, calls, manifest = backup_set
    victim = manifest.agents[1].file
    raw = bytearray(store.read_bytes(victim))
    raw[len(raw) // 2] ^= 0x01
    extra = {"ChecksumAlgorithm": "SHA256"} if with_checksum else {}
    client.put_object(Bucket=store.bucket, Key=f"{PREFIX}/{victim}", Body=bytes(raw), **extra)
    calls.clear()

    problems = check_objects(store, manifest)

    assert [p["object"] for p in problems] == [victim]
    assert "checksum" in problems[0]["problem"]
    assert calls.of("GetObject") == []
    [read_back] = check_objects(store, manifest, read_data=True)
    assert read_back == {"object": victim, "problem": "sha256 differs from the manifest"}


def test_a_truncated_dump_fails_its_toc_check_after_reading_all_of_it(backup_set) -> None:
    store, _client, _calls, manifest = backup_set
    head = store.read_bytes(manifest.dump)[:100]  # cut before its table of contents ends
    store.put_bytes("srv/cut.dump", head)

    with pytest.raises(PgToolError, match="pg_restore --list failed.*end of file"):
        read_dump_toc(store, "srv/cut.dump", len(head), default_pg_bin_dir())


def test_a_local_store_keeps_no_checksum_and_is_read_back(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    stored = store.put_bytes("srv/a", b"local bytes")
    assert stored.store_checksum is None
    assert store.metadata("srv/a").size == len(b"local bytes")
    with store.open_read("srv/a", start=6, length=3) as part:
        assert part.read() == b"byt"


# --------------------------------------------------------------------------------------------
# Restores: parallel byte ranges, checked against the sha256
# --------------------------------------------------------------------------------------------


def test_a_large_object_downloads_in_parallel_ranges(s3, tmp_path: Path) -> None:
    """One range per worker (4), the last one short: not one request per 1 MiB part."""
    store, _client, calls = s3
    size = 5 * MiB + 12_345
    span = -(-size // 4)
    stored = store.put_stream("srv/database.dump", GeneratedStream(size))
    calls.clear()

    fetched = store.download_to("srv/database.dump", tmp_path / "out")

    assert (fetched.size, fetched.sha256) == (stored.size, stored.sha256)
    assert (tmp_path / "out").read_bytes() == GeneratedStream(size).read()
    ranges = sorted(rng for _, rng, _ in calls.of("GetObject"))
    assert ranges == sorted(
        f"bytes={start}-{min(start + span, size) - 1}" for start in range(0, size, span)
    )
    assert len(ranges) == 4
    assert len({thread for _, _, thread in calls.of("GetObject")}) > 1


@pytest.mark.parametrize(
    ("size", "part", "workers", "align", "span"),
    [
        (100 * MiB, 8 * MiB, 4, 1, 25 * MiB),  # about one range per worker
        (100 * MiB + 1, 8 * MiB, 4, 1, 25 * MiB + 1),  # rounded up: never a fifth sliver
        (20 * MiB, 8 * MiB, 4, 1, 8 * MiB),  # never below the part size
        (100 * MiB, 8 * MiB, 3, 256 * 1024, 67 * MiB // 2),  # whole encrypted frames
        (100 * MiB, 8 * MiB, 1, 1, 100 * MiB),
    ],
)
def test_range_span(size: int, part: int, workers: int, align: int, span: int) -> None:
    assert range_span(size, part, workers, align) == span
    assert -(-size // span) <= workers


def test_downloaded_refuses_a_dump_whose_sha256_differs(s3) -> None:
    store, _client, _calls = s3
    stored = store.put_stream("srv/database.dump", GeneratedStream(3 * MiB + 1))

    with downloaded(store, "srv/database.dump", stored.sha256) as path:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stored.sha256
    with pytest.raises(PgToolError, match="does not match its sha256 in the manifest"):
        with downloaded(store, "srv/database.dump", "0" * 64):
            pass


_DOWNLOAD_PROBE = """
import json, os, sys, tracemalloc
from letta_ops.tasks.store.locations import open_store

store = open_store(os.environ["PROBE_URL"])
store.exists("warm-up")  # load botocore's lazily read models before measuring
tracemalloc.start()
fetched = store.download_to("probe/big", sys.argv[1])
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "size": fetched.size, "sha256": fetched.sha256}))
"""


def test_download_memory_stays_bounded(s3_env: str, s3_bucket, tmp_path: Path) -> None:
    """A 40 MiB object is fetched in 8 MiB ranges by 4 workers with a few MiB of memory.

    Measured in a child process: moto runs in this one and holds the object in memory.
    """
    client, bucket, _endpoint = s3_bucket
    size = 40 * MiB
    stored = S3ObjectStore(client, bucket).put_stream("probe/big", GeneratedStream(size))
    env = {**os.environ, "PROBE_URL": f"s3://{bucket}"}
    result = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_PROBE, str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert (report["size"], report["sha256"]) == (stored.size, stored.sha256)
    print(f"peak traced memory during download_to: {report['peak'] / MiB:.1f} MiB")
    assert report["peak"] < 8 * MiB, f"peak {report['peak'] / MiB:.1f} MiB"
