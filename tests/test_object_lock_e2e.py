"""Locked backup sets of a real Letta 0.16.2 server in a real S3 Object Lock bucket (moto).

Acceptance (issue #17, items 2, 3 and 5): a locked set is written with its retention in the
manifest and verifies; the backup role's delete is denied; a versioned delete of a locked
object is refused even with full rights; prune keeps a locked set, says why and from when it
is prunable, and deletes a set once its (short) retention has passed; a lock on a bucket without
Object Lock is refused before anything is written; doctor reports the lock, the delete rights
and that the server answers without credentials.

Short retentions are real retentions: ``--lock-days`` takes fractions, and S3 (moto) keeps a
retain-until date to the second, so a 6-second lock expires for real; no clock is faked.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from letta_ops.flows.backup import backup
from letta_ops.flows.doctor import doctor
from letta_ops.flows.prune import prune
from letta_ops.flows.verify import verify
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.sets.manifest import MANIFEST_NAME
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, seed_agents
from tests.fixtures.s3 import make_s3_client
from tests.test_least_privilege import _client, for_moto, readme_policies

pytestmark = pytest.mark.e2e

SERVER = "locked-eu"
SHORT_LOCK_SECONDS = 6


@pytest.fixture
def lock_env(start_letta, s3_env, moto_server, monkeypatch, prefect_harness):
    running = start_letta(NEW_VERSION, "object-lock")
    with running.client() as client:
        seed_agents(client, 3)
    s3 = make_s3_client(moto_server)
    bucket = f"letta-ops-lock-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("LETTA_BASE_URL", running.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", running.database.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", SERVER)
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/backups")
    for name in ("LETTA_OPS_LOCK_DAYS", "LETTA_OPS_LOCK_MODE", "LETTA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return s3, bucket, moto_server


def _versions(s3, bucket: str, prefix: str) -> list[dict]:
    response = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return response.get("Versions", []) + response.get("DeleteMarkers", [])


def test_locked_sets_verify_resist_deletes_and_prune_around_their_locks(lock_env, monkeypatch):
    s3, bucket, endpoint = lock_env
    store = S3ObjectStore(s3, bucket, "backups")

    # --- a lock the bucket cannot keep: refused before anything is written ---------------
    plain = f"letta-ops-plain-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=plain)
    with pytest.raises(Refused, match="does not have Object Lock enabled") as refused:
        backup(store=f"s3://{plain}/backups", lock_days=1)
    assert str(refused.value).count(". ") == 0  # one sentence
    assert s3.list_objects_v2(Bucket=plain).get("KeyCount") == 0

    # --- set A: locked for a day (governance), retention in the manifest, verified -------
    a = backup(lock_days=1, lock_mode="governance")
    assert a.verified and a.object_lock.mode == "GOVERNANCE"
    manifest_a = load_manifest(store, *a.set.split("/"))
    lock_a = manifest_a.object_lock
    assert lock_a is not None and lock_a.days == 1
    assert 86000 < (lock_a.retain_until - datetime.now(UTC)).total_seconds() <= 86400
    prefix_a = f"backups/{a.set}/"
    for key in [*manifest_a.objects, f"{a.set}/{MANIFEST_NAME}"]:
        head = s3.head_object(Bucket=bucket, Key=f"backups/{key}")
        assert head["ObjectLockMode"] == "GOVERNANCE"  # agent files, dump, manifest
        assert head["ObjectLockRetainUntilDate"] == lock_a.retain_until
    assert verify(a.set).ok

    # --- a delete by the backup role is denied (moto's IAM enforcement, README policy) ---
    from moto.core.authorization import enable_iam_authentication

    iam = _client("iam", endpoint)
    iam.create_user(UserName="lock-e2e-backup")
    iam.put_user_policy(
        UserName="lock-e2e-backup",
        PolicyName="backup",
        PolicyDocument=for_moto(readme_policies()["backup"], bucket).replace(
            "/letta/*", "/backups/*"
        ),
    )
    key = iam.create_access_key(UserName="lock-e2e-backup")["AccessKey"]
    backup_role = _client("s3", endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    with enable_iam_authentication():
        with pytest.raises(ClientError) as denied:
            backup_role.delete_object(Bucket=bucket, Key=f"{prefix_a}{MANIFEST_NAME}")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert S3ObjectStore(backup_role, bucket, "backups").probe_delete() is False
        backup_role.list_objects_v2(Bucket=bucket, Prefix=prefix_a)  # listing is allowed

    # ... and even full rights cannot delete a locked version:
    [version] = [v for v in _versions(s3, bucket, f"{prefix_a}{MANIFEST_NAME}") if "Size" in v]
    with pytest.raises(ClientError) as locked:
        s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert locked.value.response["Error"]["Code"] == "AccessDenied"

    # --- set B: a short lock; set C: no lock, the newest ---------------------------------
    b = backup(lock_days=SHORT_LOCK_SECONDS / 86400)
    c = backup()
    assert c.object_lock is None
    lock_b = load_manifest(store, *b.set.split("/")).object_lock
    assert lock_b is not None
    time.sleep(max(0.0, (lock_b.retain_until - datetime.now(UTC)).total_seconds()) + 1)

    # --- prune: C kept by the policy, A kept by its lock (why, until when), B deleted -----
    keep_one = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    plan = prune(server=SERVER, **keep_one)
    rows = {f"{r.server}/{r.set_id}": r for r in plan.sets}
    assert rows[a.set].action == "keep"
    assert "locked (governance) until" in rows[a.set].reasons
    assert rows[a.set].prunable_after == lock_a.retain_until
    assert rows[b.set].action == "delete" and rows[c.set].action == "keep"
    assert plan.held_by_lock == 1
    json.dumps(plan.model_dump(mode="json"))  # the --json shape: plain JSON

    done = prune(server=SERVER, execute=True, **keep_one)
    assert done.deleted == [f"{b.set}/"]
    assert _versions(s3, bucket, f"backups/{b.set}/") == []  # versions gone, no markers
    assert s3.head_object(Bucket=bucket, Key=f"{prefix_a}{MANIFEST_NAME}")  # A untouched
    assert load_manifest(store, *c.set.split("/"))

    # --- doctor: the lock, the delete rights, the open server -----------------------------
    monkeypatch.setenv("LETTA_OPS_LOCK_DAYS", "30")
    findings = {f.check: f for f in doctor().findings}
    assert findings["backup-lock"].status == "ok"
    assert "Object Lock is enabled" in findings["backup-lock"].detail
    assert "locked governance for 30 day(s)" in findings["backup-lock"].detail
    assert findings["backup-delete"].status == "ok"  # can delete, but sets are locked
    assert "can delete" in findings["backup-delete"].detail
    assert findings["server-auth"].status == "action"  # this test server has no password
    assert "without credentials" in findings["server-auth"].detail
    assert not [v for v in _versions(s3, bucket, "backups/letta-ops-delete-probe-")]
