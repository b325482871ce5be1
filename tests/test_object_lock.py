"""S3 Object Lock on backup sets: the store (on moto's real S3 endpoint), the retention plan
around locks, the doctor's verdicts and the command line's flags."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from letta_ops.blocks.backup_store import S3BackupStore, apply_object_lock
from letta_ops.tasks.doctor import access_checks
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.sets.retention import (
    BackupSetSummary,
    RetentionPolicy,
    execute_plan,
    plan_around_locks,
    plan_retention,
)
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.locations import with_object_lock
from letta_ops.tasks.store.object_lock import (
    LEGAL_HOLD,
    BucketLockConfiguration,
    ObjectLock,
    ObjectRetention,
    object_lock_from_settings,
)
from letta_ops.tasks.store.objects import MiB
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.s3 import make_s3_client

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def lock_bucket(moto_server: str) -> tuple[Any, str]:
    """A fresh bucket with Object Lock enabled (hence versioned) on the session's moto."""
    client = make_s3_client(moto_server)
    bucket = f"letta-ops-lock-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return client, bucket


def _seconds(n: float) -> ObjectLock:
    return ObjectLock("GOVERNANCE", n / 86400)


# --------------------------------------------------------------------------------------------
# What a lock is
# --------------------------------------------------------------------------------------------


def test_a_lock_ends_on_a_whole_second_days_after_now() -> None:
    lock = ObjectLock("compliance", 30)
    assert lock.mode == "COMPLIANCE"
    until = lock.retention(NOW.replace(microsecond=1)).retain_until
    assert until == NOW + timedelta(days=30, seconds=1)
    with pytest.raises(Refused, match="governance"):
        ObjectLock("forever", 1)
    with pytest.raises(Refused, match="above zero"):
        ObjectLock("GOVERNANCE", 0)


def test_lock_settings_one_sentence_on_bad_input() -> None:
    assert object_lock_from_settings(None, None) is None
    assert object_lock_from_settings("0", "compliance") is None
    assert object_lock_from_settings("7", None) == ObjectLock("GOVERNANCE", 7)
    with pytest.raises(Refused, match="LETTA_OPS_LOCK_DAYS must be a number"):
        object_lock_from_settings("a week", None, source="LETTA_OPS_LOCK_DAYS")
    with pytest.raises(Refused, match="positive"):
        object_lock_from_settings(-1, None)


def test_lock_precedence_flag_then_environment_then_block(lock_bucket: Any) -> None:
    client, bucket = lock_bucket
    block_store = S3ObjectStore(client, bucket, "p", lock=ObjectLock("COMPLIANCE", 3))
    assert apply_object_lock(block_store, environ={}).lock == ObjectLock("COMPLIANCE", 3)
    env = {"LETTA_OPS_LOCK_DAYS": "5", "LETTA_OPS_LOCK_MODE": "governance"}
    assert apply_object_lock(block_store, environ=env).lock == ObjectLock("GOVERNANCE", 5)
    assert apply_object_lock(block_store, 9, environ=env).lock == ObjectLock("GOVERNANCE", 9)
    assert apply_object_lock(block_store, 0, environ=env).lock is None  # --lock-days 0
    plain = S3ObjectStore(client, bucket, "p")
    assert apply_object_lock(plain, environ={}) is plain
    with pytest.raises(Refused, match="--lock-mode was given without a lock"):
        apply_object_lock(plain, lock_mode="COMPLIANCE", environ={})


def test_the_block_carries_the_lock_to_its_store() -> None:
    block = S3BackupStore(bucket="b", lock_days=14, lock_mode="COMPLIANCE")
    store = block.object_store()
    assert store.lock == ObjectLock("COMPLIANCE", 14)
    assert store.retention is not None and store.retention.mode == "COMPLIANCE"
    assert S3BackupStore(bucket="b").object_store().lock is None
    with pytest.raises(ValueError):
        S3BackupStore(bucket="b", lock_days=-1)


# --------------------------------------------------------------------------------------------
# The store, on a real S3 endpoint
# --------------------------------------------------------------------------------------------


def test_every_object_is_written_locked_single_and_multipart(lock_bucket: Any) -> None:
    client, bucket = lock_bucket
    store = S3ObjectStore(
        client, bucket, "backups", part_size=5 * MiB, lock=ObjectLock("COMPLIANCE", 1)
    )
    store.put_bytes("srv/set/manifest.json", b"{}")
    store.put_stream("srv/set/database.dump", io.BytesIO(b"x" * (11 * MiB)))  # 3 parts
    assert store.retention is not None
    for key in ("manifest.json", "database.dump"):
        head = client.head_object(Bucket=bucket, Key=f"backups/srv/set/{key}")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] == store.retention.retain_until
    assert store.active_lock("srv/set/", datetime.now(UTC)) == store.retention
    assert store.bucket_lock().enabled


def test_a_lock_on_a_bucket_without_object_lock_is_refused_before_writing(
    s3_bucket: Any, tmp_path: Any
) -> None:
    client, bucket, _ = s3_bucket
    store = S3ObjectStore(client, bucket, "backups", lock=ObjectLock("GOVERNANCE", 1))
    with pytest.raises(Refused, match="does not have Object Lock enabled") as refused:
        store.put_bytes("srv/set/manifest.json", b"{}")
    assert "--lock-days" in str(refused.value)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    with pytest.raises(Refused, match="does not have Object Lock enabled"):
        apply_object_lock(S3ObjectStore(client, bucket), 1, environ={})
    with pytest.raises(Refused, match="cannot lock objects"):
        with_object_lock(LocalObjectStore(tmp_path), ObjectLock("GOVERNANCE", 1))
    assert with_object_lock(LocalObjectStore(tmp_path), None).describe()  # no lock: as is


def test_deletes_in_a_lock_bucket_remove_versions_once_unlocked(lock_bucket: Any) -> None:
    client, bucket = lock_bucket
    store = S3ObjectStore(client, bucket, "backups", lock=_seconds(2))
    store.put_bytes("srv/set/manifest.json", b"{}")
    store.put_bytes("srv/set/agents/a.af", b"{}")
    from botocore.exceptions import ClientError

    with pytest.raises((ClientError, OSError)):  # still locked: S3 refuses every version
        store.delete_prefix("srv/set/")
    assert store.exists("srv/set/manifest.json")
    time.sleep(3)
    assert store.active_lock("srv/set/", datetime.now(UTC)) is None
    store.delete("srv/set/manifest.json")
    assert store.delete_prefix("srv/set/") == 1
    left = client.list_object_versions(Bucket=bucket, Prefix="backups/srv/set/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")


def test_delete_probe_deletes_nothing_and_leaves_no_marker(lock_bucket: Any) -> None:
    client, bucket = lock_bucket
    store = S3ObjectStore(client, bucket, "backups")
    store.put_bytes("srv/set/manifest.json", b"{}")
    assert store.probe_delete() is True  # moto's test credentials may delete
    versions = client.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in versions.get("Versions", [])] == ["backups/srv/set/manifest.json"]
    assert not versions.get("DeleteMarkers")


# --------------------------------------------------------------------------------------------
# Retention plans around locks
# --------------------------------------------------------------------------------------------


def _set(day: int, lock: ObjectRetention | None = None) -> BackupSetSummary:
    created = NOW - timedelta(days=day)
    set_id = f"{created:%Y%m%dT%H%M%SZ}-run{day:04d}"
    return BackupSetSummary(
        server="prod",
        set_id=set_id,
        prefix=f"prod/{set_id}/",
        created_at=created,
        complete=True,
        verified=True,
        pinned=False,
        purpose="scheduled",
        last_modified=created,
        size=1,
        lock=lock,
    )


KEEP_ONE = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)


def test_a_locked_set_stays_with_why_and_when() -> None:
    until = NOW + timedelta(days=3)
    sets = [
        _set(0),
        _set(1, ObjectRetention("COMPLIANCE", until)),
        _set(2, ObjectRetention("GOVERNANCE", NOW - timedelta(seconds=1))),  # expired
        _set(3, ObjectRetention(LEGAL_HOLD, None)),
    ]
    plan = plan_retention(sets, KEEP_ONE, NOW)
    rows = {r["set_id"]: r for r in plan.to_rows()}
    locked = rows[sets[1].set_id]
    assert locked["action"] == "keep"
    assert (
        locked["reasons"] == f"locked (compliance) until {until.isoformat()}: prunable after that"
    )
    assert locked["prunable_after"] == locked["locked_until"] == until.isoformat()
    assert rows[sets[2].set_id]["action"] == "delete"
    held = rows[sets[3].set_id]
    assert held["action"] == "keep" and "legal hold" in held["reasons"]
    assert held["prunable_after"] is None
    assert rows[sets[0].set_id]["prunable_after"] is None  # kept by the policy, not a lock


def test_prune_reads_locks_from_the_store_and_never_deletes_a_locked_object(
    lock_bucket: Any,
) -> None:
    client, bucket = lock_bucket
    locked = S3ObjectStore(client, bucket, "b", lock=_seconds(60))
    plain = S3ObjectStore(client, bucket, "b")
    old, new = _set(1), _set(0)
    locked.put_bytes(old.prefix + "manifest.json", b"{}")
    plain.put_bytes(new.prefix + "manifest.json", b"{}")
    # The catalog knows nothing of the lock (no object_lock in a manifest): the store does.
    plan = plan_around_locks(plain, [old, new], KEEP_ONE, datetime.now(UTC))
    assert [d.set.prefix for d in plan.delete] == []
    [held] = [d for d in plan.keep if d.held_by_lock]
    assert held.set.prefix == old.prefix and held.prunable_after == locked.retention.retain_until
    # A stale plan that still says "delete": execute re-reads the lock and skips it.
    stale = plan_retention([old, new], KEEP_ONE, NOW)
    said: list[str] = []
    assert execute_plan(plain, stale, log=said.append) == []
    assert "locked (governance) until" in said[0]
    assert plain.exists(old.prefix + "manifest.json")
    # A directory cannot lock: the plan is the policy's.
    assert plan_around_locks(LocalObjectStore("/nonexistent"), [old, new], KEEP_ONE, NOW).delete
    assert replace(old, lock=None).locked(NOW) is False


# --------------------------------------------------------------------------------------------
# Doctor
# --------------------------------------------------------------------------------------------


def test_doctor_server_auth() -> None:
    url = "http://127.0.0.1:8283"
    assert access_checks.check_server_auth(True, None, url, True, False).status == "ok"
    assert access_checks.check_server_auth(None, "refused", url, True, False).status == "skipped"
    secured_but_open = access_checks.check_server_auth(False, None, url, True, False)
    assert secured_but_open.status == "action" and "--secure" in secured_but_open.fix
    assert access_checks.check_server_auth(False, None, url, False, False).status == "action"
    chosen = access_checks.check_server_auth(False, None, url, False, True)
    assert chosen.status == "ok" and "OPEN" in chosen.detail


def test_doctor_lock_and_delete() -> None:
    url = "s3://b/p"
    none = BucketLockConfiguration(enabled=False)
    default = BucketLockConfiguration(True, "COMPLIANCE", 30)
    ask = ObjectLock("GOVERNANCE", 7)
    assert access_checks.check_backup_lock(none, None, url).status == "ok"
    refused = access_checks.check_backup_lock(none, ask, url)
    assert refused.status == "action" and "refused" in refused.detail
    assert access_checks.check_backup_lock(None, ask, url).status == "action"  # a directory
    assert "compliance 30 day(s)" in access_checks.check_backup_lock(default, None, url).detail
    unlocked = access_checks.check_backup_lock(BucketLockConfiguration(True), None, url)
    assert "NOT locked" in unlocked.detail
    assert (
        "locked governance for 7 day(s)"
        in access_checks.check_backup_lock(default, ask, url).detail
    )

    assert access_checks.check_backup_delete(False, False, url).status == "ok"
    assert access_checks.check_backup_delete(True, True, url).status == "ok"
    exposed = access_checks.check_backup_delete(True, False, url)
    assert exposed.status == "action" and "Least privilege" in exposed.fix
    assert access_checks.check_backup_delete(None, False, url).status == "skipped"
    env = {"LETTA_OPS_LOCK_DAYS": "2"}
    assert access_checks.requested_object_lock(None, env) == ObjectLock("GOVERNANCE", 2)


def test_doctor_anonymous_probe_of_a_port_nobody_listens_on() -> None:
    refused, error = access_checks.anonymous_access_refused("http://127.0.0.1:9")
    assert refused is None and error


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_lock_flags_parse_and_refuse_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from letta_ops.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["backup", "--lock-days", "30", "--lock-mode", "compliance"])
    assert (args.lock_days, args.lock_mode) == (30.0, "COMPLIANCE")
    args = parser.parse_args(["fleet-backup", "--lock-days", "0.5"])
    assert args.lock_days == 0.5 and args.lock_mode is None
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["backup", "--lock-days", "-1"])
    assert exit_.value.code == 2
    assert "non-negative number of days" in capsys.readouterr().err
