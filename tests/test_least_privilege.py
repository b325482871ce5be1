"""The README's three IAM policies (backup, restore, prune), enforced by moto's IAM evaluation.

Why its own moto server: IAM enforcement is a process-wide switch in moto, and the session's
server runs inside the test process. This test starts ``moto_server`` as a child process on
127.0.0.1 (a free port), turns enforcement on once its users exist (``/moto-api/reset-auth``),
and stops it by its pid.

moto names some S3 actions after the API operation rather than the IAM action, so
:data:`MOTO_ALIASES` adds those names beside the real ones before a policy is attached. The
policies themselves are read from README.md: the document operators copy is the one tested.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest, record_verification
from letta_ops.tasks.sets.manifest import MANIFEST_NAME
from letta_ops.tasks.sets.retention import RetentionPolicy, execute_plan, plan_around_locks
from letta_ops.tasks.store.object_lock import ObjectLock
from letta_ops.tasks.store.objects import MiB, ObjectExistsError
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest
from tests.fixtures.s3 import S3_TEST_ENV

README = Path(__file__).resolve().parents[1] / "README.md"
PREFIX = "letta"
SERVER = "prod"

#: Real IAM action -> the names moto checks for the same requests (moto 5.2).
MOTO_ALIASES: dict[str, list[str]] = {
    "s3:ListBucket": ["s3:ListObjectsV2", "s3:ListObjects"],
    "s3:ListBucketVersions": ["s3:ListObjectVersions"],
    "s3:GetBucketObjectLockConfiguration": ["s3:GetObjectLockConfiguration"],
    "s3:GetObject": ["s3:HeadObject"],
    "s3:GetObjectVersion": ["s3:GetObject", "s3:HeadObject"],
    "s3:PutObject": ["s3:CreateMultipartUpload", "s3:UploadPart", "s3:CompleteMultipartUpload"],
    "s3:DeleteObject": ["s3:DeleteObjects"],
    "s3:DeleteObjectVersion": ["s3:DeleteObject", "s3:DeleteObjects"],
}


def readme_policies() -> dict[str, dict[str, Any]]:
    """The JSON block after each ``<!-- iam-policy: NAME -->`` marker in README.md."""
    found = re.findall(
        r"<!-- iam-policy: (\w+) -->\s*```json\n(.*?)\n```", README.read_text(), re.S
    )
    return {name: json.loads(text) for name, text in found}


def for_moto(policy: dict[str, Any], bucket: str) -> str:
    """The policy for ``bucket``/``PREFIX``, with moto's action names added."""
    text = json.dumps(policy).replace("BUCKET", bucket).replace("PREFIX", PREFIX)
    document = json.loads(text)
    for statement in document["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        if {"s3:DeleteObject", "s3:DeleteObjectVersion"} & set(actions):
            # moto authorizes a batch delete (DeleteObjects) against the bucket's ARN, where
            # AWS checks s3:DeleteObject on each key.
            statement["Resource"] = sorted({*resources, f"arn:aws:s3:::{bucket}"})
        statement["Action"] = sorted(
            {*actions, *(a for x in actions for a in MOTO_ALIASES.get(x, []))}
        )
    return json.dumps(document)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def iam_moto() -> Iterator[str]:
    """``moto_server`` in its own process on 127.0.0.1, stopped by its pid."""
    port = _free_port()
    env = {**os.environ, **S3_TEST_ENV}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(service: str, url: str, key: str = "admin", secret: str = "admin") -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


@pytest.fixture(scope="module")
def roles(iam_moto: str) -> dict[str, Any]:
    """An Object Lock bucket and one IAM user per README policy (plus an admin); IAM enforced
    from here on. Returns boto3 S3 clients by role name, and the bucket."""
    bucket = f"least-{uuid.uuid4().hex[:12]}"
    s3 = _client("s3", iam_moto)
    iam = _client("iam", iam_moto)
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    policies = readme_policies()
    assert set(policies) == {"backup", "restore", "prune"}
    policies["admin"] = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    clients: dict[str, Any] = {"bucket": bucket}
    for name, policy in policies.items():
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name, PolicyName=f"letta-ops-{name}", PolicyDocument=for_moto(policy, bucket)
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        clients[name] = _client("s3", iam_moto, key["AccessKeyId"], key["SecretAccessKey"])
        clients[f"{name}-credentials"] = (key["AccessKeyId"], key["SecretAccessKey"])
    httpx.post(f"{iam_moto}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield clients
    finally:
        httpx.post(f"{iam_moto}/moto-api/reset-auth", content=b"inf")


def _denied(call: Any) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "AccessDenied"
    except OSError as exc:  # delete_prefix reports per-key errors of a batch
        return "Access Denied" in str(exc) or "AccessDenied" in str(exc)
    return False


def _write_set(store: S3ObjectStore, set_id: str) -> str:
    """What the backup flow writes: agent files, a multipart dump, then the manifest."""
    from letta_ops.tasks.sets.manifest import ManifestObject

    prefix = f"{SERVER}/{set_id}/"
    agent = store.put_bytes(f"{prefix}agents/agent-1.af", b'{"agents": []}')
    dump = store.put_stream(f"{prefix}database.dump", io.BytesIO(b"d" * (11 * MiB)))
    now = datetime.now(UTC)
    manifest = hand_made_manifest(
        set_id,
        SERVER,
        dump.key,
        {
            o.key: ManifestObject(size=o.size, sha256=o.sha256, store_checksum=o.store_checksum)
            for o in (agent, dump)
        },
        created_at=now,
        postgres_version="18.1",
        row_counts={"agents": 1},
    )
    store.put_bytes(prefix + MANIFEST_NAME, manifest.to_json())
    return prefix


def test_readme_policies_are_valid_and_separate_the_rights() -> None:
    policies = readme_policies()

    def allowed(name: str) -> set[str]:
        return {
            a
            for s in policies[name]["Statement"]
            if s["Effect"] == "Allow"
            for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        }

    deletes = {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"}
    assert not allowed("backup") & deletes and not allowed("restore") & deletes
    assert not allowed("restore") & {"s3:PutObject", "s3:PutObjectRetention"}
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion"} <= allowed("prune")
    assert "s3:BypassGovernanceRetention" not in allowed("prune")  # nobody lifts a lock
    assert all("*" not in a for name in policies for a in allowed(name))


def test_each_role_can_do_its_job_and_nothing_more(roles: dict[str, Any]) -> None:
    bucket = roles["bucket"]
    # 12 seconds: long enough to outlast the writes and plans below on a loaded 2-core host
    # (4 s did not), short enough for the prune below to wait it out.
    lock = ObjectLock("GOVERNANCE", 12 / 86400)
    backup = S3ObjectStore(roles["backup"], bucket, PREFIX, part_size=5 * MiB, lock=lock)

    # --- backup: put new (locked) objects, multipart too, list, read back, record ---------
    prefix = _write_set(backup, "20261201T021500Z-aaaa1111")
    [summary] = list_backup_sets(backup, SERVER)
    assert summary.complete
    manifest = load_manifest(backup, SERVER, summary.set_id)
    for key, entry in manifest.objects.items():
        assert backup.metadata(key).store_checksum == entry.store_checksum
    assert backup.hash_object(manifest.dump).sha256 == manifest.objects[manifest.dump].sha256
    record_verification(backup, prefix, {"ok": True})
    head = roles["admin"].head_object(Bucket=bucket, Key=f"{PREFIX}/{manifest.dump}")
    assert head["ObjectLockMode"] == "GOVERNANCE"  # the multipart upload carried the lock

    # ... and no delete, no overwrite:
    assert _denied(lambda: roles["backup"].delete_object(Bucket=bucket, Key=f"{PREFIX}/{prefix}x"))
    assert _denied(lambda: backup.delete(prefix + MANIFEST_NAME))
    assert _denied(lambda: backup.delete_prefix(prefix))
    with pytest.raises(ObjectExistsError):
        backup.put_bytes(prefix + MANIFEST_NAME, b"{}")
    assert backup.probe_delete() is False  # the doctor's probe: cannot delete

    # --- restore: list, manifest, ranged parallel download; no put, no delete -------------
    restore = S3ObjectStore(roles["restore"], bucket, PREFIX, download_part_size=2 * MiB)
    [seen] = list_backup_sets(restore, SERVER)
    assert seen.verified  # it reads the verification record the backup wrote
    manifest = load_manifest(restore, SERVER, seen.set_id)
    with _tmpfile() as path:
        got = restore.download_to(manifest.dump, path)
    assert got.sha256 == manifest.objects[manifest.dump].sha256
    assert _denied(lambda: restore.put_bytes(f"{prefix}restore-wrote-this", b"x"))
    assert _denied(lambda: roles["restore"].delete_object(Bucket=bucket, Key=f"{PREFIX}/{prefix}x"))
    assert restore.probe_delete() is False

    # --- prune: only this role plans (versions, retention) and deletes, and only when expired
    prune = S3ObjectStore(roles["prune"], bucket, PREFIX)
    newer = _write_set(
        S3ObjectStore(roles["backup"], bucket, PREFIX, part_size=5 * MiB),
        "20261202T021500Z-bbbb2222",
    )
    record_verification(backup, newer, {"ok": True})
    sets = list_backup_sets(prune, SERVER)
    # Neither the backup nor the restore role can prune: the backup role may not list
    # versions; the restore role may not read the lock configuration (so it plans as if
    # unlocked) and its first delete is refused.
    assert _denied(lambda: plan_around_locks(backup, sets, _keep_one(), _now()))
    unlocked_plan = plan_around_locks(restore, sets, _keep_one(), _now())
    assert [d.set.prefix for d in unlocked_plan.delete] == [prefix]
    assert _denied(lambda: execute_plan(restore, unlocked_plan))
    assert roles["admin"].head_object(Bucket=bucket, Key=f"{PREFIX}/{prefix}{MANIFEST_NAME}")
    plan = plan_around_locks(prune, sets, _keep_one(), _now())
    [held] = [d for d in plan.keep if d.held_by_lock]
    assert held.set.prefix == prefix and "prunable after" in held.reasons[0]
    assert execute_plan(prune, plan) == []
    time.sleep(max(0.0, (held.prunable_after - _now()).total_seconds()) + 1)
    plan = plan_around_locks(prune, list_backup_sets(prune, SERVER), _keep_one(), _now())
    assert [d.set.prefix for d in plan.delete] == [prefix]
    assert execute_plan(prune, plan) == [prefix]
    left = roles["admin"].list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/{prefix}")
    assert not left.get("Versions") and not left.get("DeleteMarkers")  # versions gone too
    assert prune.probe_delete() is True


def _keep_one() -> RetentionPolicy:
    return RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)


def _now() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=0)


@contextlib.contextmanager
def _tmpfile() -> Iterator[str]:
    import tempfile

    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        yield path
    finally:
        os.unlink(path)
