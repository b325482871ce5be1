"""The backup store's promises, checked against both stores with the same tests.

S3 runs on a real moto HTTP server on loopback; the local store on a temporary directory.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from letta_ops.blocks.backup_store import LocalBackupStore, S3BackupStore, backup_store_from_url
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.locations import open_store, parse_store_url
from letta_ops.tasks.store.objects import MiB, ObjectExistsError, ObjectStore
from letta_ops.tasks.store.s3 import S3ObjectStore

PART_SIZE = 5 * MiB
REPO_ROOT = Path(__file__).resolve().parents[1]


class GeneratedStream(io.RawIOBase):
    """A file-like object producing ``size`` deterministic pseudo-random bytes on the fly.

    It holds one 1 MiB block and never the whole content, so memory measured around an
    upload is the uploader's, not the test's. ``fail_after`` makes it raise once that many
    bytes have been produced, like a pg_dump pipe that breaks mid-way.
    """

    _BLOCK = random.Random(20260101).randbytes(MiB + 7)

    def __init__(self, size: int, *, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.fail_after is not None and self.position >= self.fail_after:
            raise OSError("the source broke mid-stream")
        limit = self.size if self.fail_after is None else min(self.size, self.fail_after)
        offset = self.position % len(self._BLOCK)  # content depends on position only
        count = min(len(buffer), limit - self.position, len(self._BLOCK) - offset)
        if count <= 0:
            return 0
        buffer[:count] = self._BLOCK[offset : offset + count]
        self.position += count
        return count

    @classmethod
    def expected(cls, size: int) -> tuple[int, str]:
        """Size and sha256 of what a stream of ``size`` bytes produces, computed in chunks."""
        digest = hashlib.sha256()
        stream = cls(size)
        total = 0
        while chunk := stream.read(MiB):
            digest.update(chunk)
            total += len(chunk)
        return total, digest.hexdigest()


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each behavioural test runs once on S3 (moto) and once on a local directory."""
    if request.param == "s3":
        client, bucket, _endpoint = request.getfixturevalue("s3_bucket")
        return S3ObjectStore(client, bucket, "backups/prod", part_size=PART_SIZE)
    return LocalObjectStore(tmp_path / "store")


def _leftovers(store: ObjectStore) -> list[str]:
    """Anything an interrupted upload could have left behind, visible or not."""
    if isinstance(store, S3ObjectStore):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        objects = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
        return [u["Key"] for u in uploads] + [o["Key"] for o in objects]
    assert isinstance(store, LocalObjectStore)
    if not store.root.exists():
        return []
    return [str(p) for p in store.root.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------------------------
# Round trip, write-once, multipart
# --------------------------------------------------------------------------------------------


def test_round_trip_records_the_sha256_of_what_was_stored(store: ObjectStore) -> None:
    data = b"agent file \x00\xff" * 1000
    seen: list[int] = []

    stored = store.put_stream("srv/set-1/agents/agent-1.af", io.BytesIO(data), progress=seen.append)

    assert stored.key == "srv/set-1/agents/agent-1.af"
    assert stored.size == len(data) == sum(seen)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes("srv/set-1/agents/agent-1.af") == data
    assert store.exists("srv/set-1/agents/agent-1.af")
    assert not store.exists("srv/set-1/agents/agent-2.af")
    reread = store.hash_object("srv/set-1/agents/agent-1.af")
    assert (reread.size, reread.sha256) == (stored.size, stored.sha256)
    assert store.put_bytes("srv/set-1/empty", b"").size == 0
    assert store.read_bytes("srv/set-1/empty") == b""


def test_put_file_and_streaming_read(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "dump.pgdump"
    source.write_bytes(os.urandom(300_000))

    stored = store.put_file("srv/set-1/db.pgdump", source)

    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    with store.open_read("srv/set-1/db.pgdump") as stream:
        assert stream.read(10) == source.read_bytes()[:10]
    with pytest.raises(FileNotFoundError):
        store.read_bytes("srv/set-1/missing")


def test_write_once_refuses_a_second_put_and_keeps_the_first(store: ObjectStore) -> None:
    store.put_bytes("srv/set-1/manifest.json", b'{"first": true}')

    with pytest.raises(ObjectExistsError):
        store.put_bytes("srv/set-1/manifest.json", b'{"second": true}')
    with pytest.raises(FileExistsError):  # ObjectExistsError is a FileExistsError
        store.put_stream("srv/set-1/manifest.json", GeneratedStream(12 * MiB))

    assert store.read_bytes("srv/set-1/manifest.json") == b'{"first": true}'
    assert len(_leftovers(store)) == 1  # no partial file, no pending upload
    assert [o.key for o in store.list("srv/")] == ["srv/set-1/manifest.json"]


@pytest.mark.parametrize("size", [100, 12 * MiB], ids=["single-put", "multipart"])
def test_write_once_holds_when_two_writers_race(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Both writers pass the existence check; only the final step may decide.

    On S3 this is ``IfNoneMatch="*"`` on put_object / complete_multipart_upload (moto honours
    it); locally it is ``os.link`` refusing an existing name.
    """
    store.put_bytes("srv/race", b"winner")
    monkeypatch.setattr(store, "exists", lambda key: False)

    with pytest.raises(ObjectExistsError):
        store.put_stream("srv/race", GeneratedStream(size))

    monkeypatch.undo()
    assert store.read_bytes("srv/race") == b"winner"
    assert len(_leftovers(store)) == 1  # the winner only: no upload, no partial file


def test_large_object_goes_through_multipart(store: ObjectStore) -> None:
    size, sha256 = GeneratedStream.expected(12 * MiB)

    stored = store.put_stream("srv/set-1/db.pgdump", GeneratedStream(12 * MiB))

    assert (stored.size, stored.sha256) == (size, sha256)
    reread = store.hash_object("srv/set-1/db.pgdump")
    assert (reread.size, reread.sha256) == (stored.size, stored.sha256)
    if isinstance(store, S3ObjectStore):
        head = store.client.head_object(Bucket=store.bucket, Key="backups/prod/srv/set-1/db.pgdump")
        assert head["ContentLength"] == size
        assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts


_MEMORY_PROBE = """
import hashlib, io, json, os, random, tracemalloc
from typing import Any
from letta_ops.tasks.store.locations import open_store
from letta_ops.tasks.store.objects import MiB

{stream_class}

store = open_store(os.environ["PROBE_URL"], part_size=int(os.environ["PROBE_PART_SIZE"]))
store.exists("warm-up")  # load botocore's lazily read models before measuring
stream = GeneratedStream(int(os.environ["PROBE_SIZE"]))
tracemalloc.start()
stored = store.put_stream("probe/big", stream)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"peak": peak, "size": stored.size, "sha256": stored.sha256}}))
"""


def test_memory_stays_bounded_whatever_the_object_size(
    store: ObjectStore, s3_env: str, tmp_path: Path
) -> None:
    """A 40 MiB stream is uploaded with well under 3 parts of memory.

    Measured in a child process: moto runs in this one and keeps every uploaded byte in
    memory, which tracemalloc would count against the uploader.
    """
    size = 40 * MiB
    url = store.describe()
    env = {**os.environ, "PROBE_URL": url, "PROBE_PART_SIZE": str(PART_SIZE)}
    env["PROBE_SIZE"] = str(size)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE.format(stream_class=inspect.getsource(GeneratedStream)),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert (report["size"], report["sha256"]) == GeneratedStream.expected(size)
    print(f"peak traced memory during put_stream: {report['peak'] / MiB:.1f} MiB")
    assert report["peak"] < 3 * PART_SIZE, f"peak {report['peak'] / MiB:.1f} MiB"
    assert store.hash_object("probe/big").sha256 == report["sha256"]


def test_the_next_part_is_read_while_a_part_is_sent(s3_bucket: Any) -> None:
    """pg_dump must not stop while a part crosses the network: the upload reads the stream's
    next part while the previous one is on its way (one part in flight, memory two parts)."""
    client, bucket, _endpoint = s3_bucket
    store = S3ObjectStore(client, bucket, "backups/prod", part_size=PART_SIZE)
    events: list[str] = []
    real_upload_part = client.upload_part

    def slow_upload_part(**kwargs: Any) -> Any:
        events.append(f"send {kwargs['PartNumber']}")
        time.sleep(0.3)
        response = real_upload_part(**kwargs)
        events.append(f"sent {kwargs['PartNumber']}")
        return response

    class RecordedStream(GeneratedStream):
        def readinto(self, buffer: Any) -> int:
            if self.position in (PART_SIZE, 2 * PART_SIZE):
                events.append(f"read from {self.position // PART_SIZE + 1}")
            return super().readinto(buffer)

    client.upload_part = slow_upload_part
    try:
        stored = store.put_stream("srv/set-1/db.pgdump", RecordedStream(12 * MiB))
    finally:
        client.upload_part = real_upload_part
    assert (stored.size, stored.sha256) == GeneratedStream.expected(12 * MiB)
    # Part 2 is read while part 1 is sent; part 2 is sent only after part 1 is.
    assert events.index("read from 2") < events.index("sent 1") < events.index("send 2")
    assert store.hash_object("srv/set-1/db.pgdump").sha256 == stored.sha256


@pytest.mark.parametrize("fail_after", [1 * MiB, 7 * MiB], ids=["first-part", "mid-multipart"])
def test_a_broken_stream_leaves_nothing_behind(store: ObjectStore, fail_after: int) -> None:
    with pytest.raises(OSError, match="broke mid-stream"):
        store.put_stream("srv/set-1/db.pgdump", GeneratedStream(12 * MiB, fail_after=fail_after))

    assert not store.exists("srv/set-1/db.pgdump")
    assert list(store.list()) == []
    assert _leftovers(store) == []  # no incomplete multipart upload, no partial file


# --------------------------------------------------------------------------------------------
# Listing and deleting
# --------------------------------------------------------------------------------------------


def test_list_pages_through_every_object_in_key_order(store: ObjectStore) -> None:
    keys = [f"srv/2026-01-0{i}T000000Z-run{i}/manifest.json" for i in (3, 1, 5, 2, 4)]
    for key in keys:
        store.put_bytes(key, key.encode())
    store.put_bytes("other-server/x", b"x")
    calls: list[int] = []
    if isinstance(store, S3ObjectStore):
        store.client.meta.events.register(
            "before-call.s3.ListObjectsV2", lambda **_: calls.append(1)
        )

    listed = list(store.list("srv/", page_size=2))
    pages = len(calls)

    assert [o.key for o in listed] == sorted(keys)
    assert [o.size for o in listed] == [len(k) for k in sorted(keys)]
    assert all(o.last_modified.tzinfo is not None for o in listed)
    assert [o.key for o in store.list("srv/2026-01-03")] == [sorted(keys)[2]]
    assert len(list(store.list())) == 6
    if isinstance(store, S3ObjectStore):
        assert pages == 3  # 2 + 2 + 1


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for name in ("a", "b", "c"):
        store.put_bytes(f"srv/set-1/{name}", b"1")
    store.put_bytes("srv/set-10/a", b"2")
    store.put_bytes("srv/set-2/a", b"3")

    store.delete("srv/set-1/a")
    store.delete("srv/set-1/a")  # idempotent, as in S3
    assert store.delete_prefix("srv/set-1/") == 2
    with pytest.raises(ValueError, match="empty prefix"):
        store.delete_prefix("")

    assert [o.key for o in store.list()] == ["srv/set-10/a", "srv/set-2/a"]


# --------------------------------------------------------------------------------------------
# Keys that would escape the store
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../escape", "srv/../../escape", "/etc/passwd", "srv//x", "srv/./x", "", "a\\b"]
)
def test_keys_that_could_escape_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="[Kk]ey"):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.list(key + "/").__next__()
    assert _leftovers(store) == []


# --------------------------------------------------------------------------------------------
# Repository URLs and blocks
# --------------------------------------------------------------------------------------------


def test_open_store_parses_both_url_forms(s3_env: str, s3_bucket: Any, tmp_path: Path) -> None:
    _client, bucket, _endpoint = s3_bucket

    s3 = open_store(f"s3://{bucket}/letta/prod/")
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix) == (bucket, "letta/prod")
    assert s3.describe() == f"s3://{bucket}/letta/prod"
    s3.put_bytes("k", b"via boto3's environment")  # the client really reaches moto
    assert s3.read_bytes("k") == b"via boto3's environment"

    local = open_store(f"file://{tmp_path}/backups")
    assert isinstance(local, LocalObjectStore)
    assert local.root == tmp_path / "backups"
    assert local.describe() == f"file://{tmp_path}/backups"
    bare = open_store(str(tmp_path / "bare"))
    assert isinstance(bare, LocalObjectStore) and bare.root == tmp_path / "bare"


@pytest.mark.parametrize("url", ["ftp://x", "backups", "file://relative/x", "s3://"])
def test_open_store_refuses_other_urls_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match="s3://|file:///"):
        open_store(url)


def test_store_url_must_not_carry_credentials() -> None:
    with pytest.raises(ValueError, match="credentials"):
        parse_store_url("s3://AKIA:secret@bucket/prefix")


def test_describe_never_shows_credentials(s3_bucket: Any) -> None:
    _client, bucket, endpoint = s3_bucket
    block = S3BackupStore(
        bucket=bucket,
        prefix="letta",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAEXAMPLEKEYID",
        aws_secret_access_key="wJalrXUtnFEMI-very-secret",
        part_size_mb=5,
    )
    store = block.object_store()

    stored = store.put_bytes("k", b"data")  # explicit block credentials work

    assert stored.size == 4
    for text in (store.describe(), block.url, repr(block), str(block)):
        assert "wJalrXUtnFEMI-very-secret" not in text
    assert store.describe() == f"s3://{bucket}/letta"
    assert store.part_size == 5 * MiB


def test_backup_store_from_url_leaves_credentials_to_boto3(
    s3_env: str, s3_bucket: Any, tmp_path: Path
) -> None:
    _client, bucket, _endpoint = s3_bucket

    block = backup_store_from_url(f"s3://{bucket}/nightly")
    assert isinstance(block, S3BackupStore)
    assert (block.bucket, block.prefix) == (bucket, "nightly")
    assert block.aws_access_key_id is None and block.aws_secret_access_key is None
    assert block.endpoint_url is None and block.region_name is None
    assert block.object_store().put_bytes("k", b"x").size == 1

    local = backup_store_from_url(f"file://{tmp_path}")
    assert isinstance(local, LocalBackupStore) and local.path == tmp_path
    assert local.object_store().put_bytes("k", b"xy").size == 2
    with pytest.raises(ValueError, match="s3://"):
        backup_store_from_url("ftp://x")


def test_s3_part_size_below_the_s3_minimum_is_refused(s3_bucket: Any) -> None:
    client, bucket, _endpoint = s3_bucket
    with pytest.raises(ValueError, match="5 MiB"):
        S3ObjectStore(client, bucket, part_size=MiB)
    with pytest.raises(ValueError):
        S3BackupStore(bucket=bucket, part_size_mb=4)


class _RawBody:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


def test_s3_store_without_conditional_writes_still_refuses_overwrites(s3_bucket: Any) -> None:
    """Some S3-compatible stores answer 501 to ``If-None-Match``: fall back to the head check.

    The 501 is injected at botocore's send hook; every other request reaches moto.
    """
    from botocore.awsrequest import AWSResponse

    client, bucket, _endpoint = s3_bucket
    refused: list[str] = []

    def refuse_conditional(request: Any, **_: Any) -> AWSResponse | None:
        if "If-None-Match" not in request.headers:
            return None
        refused.append(request.url)
        body = b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"
        return AWSResponse(request.url, 501, {}, _RawBody(body))

    client.meta.events.register("before-send.s3", refuse_conditional)
    store = S3ObjectStore(client, bucket, part_size=PART_SIZE)

    store.put_bytes("small", b"one")
    store.put_stream("large", GeneratedStream(6 * MiB))
    with pytest.raises(ObjectExistsError):
        store.put_bytes("small", b"two")

    assert len(refused) == 1 and store.conditional_writes is False
    assert store.read_bytes("small") == b"one"
    assert store.hash_object("large").sha256 == GeneratedStream.expected(6 * MiB)[1]


def test_each_s3_client_reads_the_credentials_of_its_moment(monkeypatch) -> None:
    """boto3's default session keeps the first credentials it resolved; a worker that backs
    up with one role and restores with another must not send the first role's keys."""
    from letta_ops.tasks.store.s3 import s3_client_from_env

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("backup-role-key", "restore-role-key"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{key}-secret")
        client = s3_client_from_env()
        assert client._request_signer._credentials.access_key == key
