"""Retention planning on synthetic summaries, and its executor on a real local store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from letta_ops.tasks.sets.catalog import record_pin, summarize_set, write_manifest
from letta_ops.tasks.sets.manifest import ManifestObject
from letta_ops.tasks.sets.retention import (
    BackupSetSummary,
    RetentionPlan,
    RetentionPolicy,
    execute_plan,
    plan_retention,
)
from letta_ops.tasks.store.local import LocalObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def summary(
    created_at: datetime | None,
    *,
    server: str = "prod",
    verified: bool = True,
    pinned: bool = False,
    last_modified: datetime | None = None,
    suffix: str = "abcd",
) -> BackupSetSummary:
    moment = created_at or last_modified
    assert moment is not None
    set_id = f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"
    return BackupSetSummary(
        server=server,
        set_id=set_id,
        prefix=f"{server}/{set_id}/",
        created_at=created_at,
        complete=created_at is not None,
        verified=verified,
        pinned=pinned,
        purpose="scheduled",
        last_modified=last_modified or moment + timedelta(minutes=5),
        size=100,
    )


def policy(**kwargs: float) -> RetentionPolicy:
    values = {"keep_last": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    values.update(kwargs)
    return RetentionPolicy(**values)


def kept(plan: RetentionPlan) -> dict[str, list[str]]:
    return {d.set.set_id: d.reasons for d in plan.keep}


def deleted(plan: RetentionPlan) -> set[str]:
    return {d.set.set_id for d in plan.delete}


def days_back(n: int, hour: int = 2) -> list[BackupSetSummary]:
    """One set a day at ``hour`` UTC for the ``n`` days before NOW, newest first."""
    return [summary(datetime(2026, 4, 30, hour, tzinfo=UTC) - timedelta(days=i)) for i in range(n)]


def test_keep_last() -> None:
    sets = days_back(5)
    plan = plan_retention(sets, policy(keep_last=2), NOW)
    assert kept(plan) == {
        sets[0].set_id: ["last 2", "newest verified"],
        sets[1].set_id: ["last 2"],
    }
    assert deleted(plan) == {s.set_id for s in sets[2:]}


def test_daily_keeps_only_newest_of_each_day() -> None:
    morning = summary(datetime(2026, 4, 30, 2, tzinfo=UTC), suffix="morn")
    evening = summary(datetime(2026, 4, 30, 20, tzinfo=UTC), suffix="even")
    yesterday = summary(datetime(2026, 4, 29, 2, tzinfo=UTC))
    older = summary(datetime(2026, 4, 28, 2, tzinfo=UTC))
    plan = plan_retention([morning, older, evening, yesterday], policy(keep_daily=2), NOW)
    assert kept(plan) == {
        evening.set_id: ["daily", "newest verified"],
        yesterday.set_id: ["daily"],
    }
    assert deleted(plan) == {morning.set_id, older.set_id}


def test_daily_weekly_monthly_over_120_days() -> None:
    # One set a day at 02:00 UTC from 2026-01-01 to 2026-04-30: 31 + 28 + 31 + 30 = 120 sets.
    sets = days_back(120)
    assert sets[-1].created_at == datetime(2026, 1, 1, 2, tzinfo=UTC)
    plan = plan_retention(
        sets, policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=3), NOW
    )
    by_day = {s.created_at.strftime("%m-%d"): s.set_id for s in sets}  # type: ignore[union-attr]
    # last 3:  Apr 30, 29, 28.
    # daily 7: Apr 30 .. Apr 24.
    # weekly 4 (2026-04-30 is a Thursday; ISO weeks start on Monday): the newest set of the
    #   weeks Apr 27-May 3, Apr 20-26, Apr 13-19, Apr 6-12 -> Apr 30, Apr 26, Apr 19, Apr 12.
    # monthly 3: Apr 30, Mar 31, Feb 28.
    # Union: Apr 24..30 (7) + Apr 19, Apr 12 + Mar 31, Feb 28 = 11 kept, 109 deleted.
    assert kept(plan) == {
        by_day["04-30"]: ["last 3", "daily", "weekly", "monthly", "newest verified"],
        by_day["04-29"]: ["last 3", "daily"],
        by_day["04-28"]: ["last 3", "daily"],
        by_day["04-27"]: ["daily"],
        by_day["04-26"]: ["daily", "weekly"],
        by_day["04-25"]: ["daily"],
        by_day["04-24"]: ["daily"],
        by_day["04-19"]: ["weekly"],
        by_day["04-12"]: ["weekly"],
        by_day["03-31"]: ["monthly"],
        by_day["02-28"]: ["monthly"],
    }
    assert len(plan.delete) == 109
    assert len(plan.keep) + len(plan.delete) == 120


def test_buckets_count_only_periods_that_have_sets() -> None:
    # A gap of several days: "last 2 days" means the last 2 days *with* a set.
    recent = summary(datetime(2026, 4, 30, 2, tzinfo=UTC))
    old = summary(datetime(2026, 4, 10, 2, tzinfo=UTC))
    older = summary(datetime(2026, 4, 9, 2, tzinfo=UTC))
    plan = plan_retention([recent, old, older], policy(keep_daily=2), NOW)
    assert set(kept(plan)) == {recent.set_id, old.set_id}


def test_order_uses_manifest_time_not_object_time() -> None:
    # Objects re-copied in reverse order: last_modified says the oldest set is the newest.
    sets = [
        summary(
            datetime(2026, 4, 28 + i, 2, tzinfo=UTC),
            last_modified=datetime(2026, 4, 30, 23, tzinfo=UTC) - timedelta(hours=i),
        )
        for i in range(3)
    ]
    plan = plan_retention(sets, policy(keep_last=1), NOW)
    assert set(kept(plan)) == {sets[2].set_id}  # created 2026-04-30
    assert deleted(plan) == {sets[0].set_id, sets[1].set_id}


def test_newest_verified_survives() -> None:
    sets = days_back(6)
    sets = [
        summary(s.created_at, verified=i >= 3)  # the 3 newest are not verified
        for i, s in enumerate(sets)
    ]
    plan = plan_retention(sets, policy(keep_last=1), NOW)
    assert kept(plan) == {
        sets[0].set_id: ["last 1"],
        sets[3].set_id: ["newest verified"],
    }
    assert deleted(plan) == {sets[1].set_id, sets[2].set_id, sets[4].set_id, sets[5].set_id}


def test_no_verified_set_means_no_extra_keep() -> None:
    sets = [summary(s.created_at, verified=False) for s in days_back(3)]
    plan = plan_retention(sets, policy(keep_last=1), NOW)
    assert kept(plan) == {sets[0].set_id: ["last 1"]}


def test_pinned_sets_are_kept() -> None:
    sets = days_back(10)
    pinned = summary(sets[7].created_at, pinned=True)
    sets[7] = pinned
    plan = plan_retention(sets, policy(keep_last=2), NOW)
    assert kept(plan)[pinned.set_id] == ["pinned"]
    assert len(plan.keep) == 3


def test_incomplete_sets_deleted_after_grace_only() -> None:
    stale = summary(None, last_modified=NOW - timedelta(hours=25), suffix="stal")
    running = summary(None, last_modified=NOW - timedelta(hours=1), suffix="runn")
    stale_pinned = summary(
        None, last_modified=NOW - timedelta(hours=48), pinned=True, suffix="pinn"
    )
    complete = summary(datetime(2026, 4, 30, 2, tzinfo=UTC))
    plan = plan_retention([stale, running, stale_pinned, complete], RetentionPolicy(), NOW)
    assert [(d.set.set_id, d.reasons) for d in plan.delete] == [
        (stale.set_id, ["incomplete, older than 24h"])
    ]
    assert kept(plan)[running.set_id] == ["incomplete, may still be running"]
    assert kept(plan)[stale_pinned.set_id] == ["pinned"]
    assert kept(plan)[complete.set_id] == [
        "last 7",
        "daily",
        "weekly",
        "monthly",
        "newest verified",
    ]


def test_incomplete_sets_do_not_count_for_rules() -> None:
    running = summary(None, last_modified=NOW - timedelta(hours=1), suffix="runn")
    done = summary(datetime(2026, 4, 29, 2, tzinfo=UTC))
    plan = plan_retention([running, done], policy(keep_last=1), NOW)
    assert kept(plan)[done.set_id] == ["last 1", "newest verified"]


def test_servers_are_independent() -> None:
    prod = [summary(s.created_at, server="prod") for s in days_back(3)]
    staging = [summary(s.created_at - timedelta(days=30), server="staging") for s in days_back(3)]
    plan = plan_retention(prod + staging, policy(keep_last=1), NOW)
    assert {(d.set.server, d.set.set_id) for d in plan.keep} == {
        ("prod", prod[0].set_id),
        ("staging", staging[0].set_id),
    }
    assert all(d.reasons == ["last 1", "newest verified"] for d in plan.keep)
    assert len(plan.delete) == 4


def test_all_zero_policy_refused() -> None:
    with pytest.raises(ValidationError, match="must keep something"):
        RetentionPolicy(keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0)
    with pytest.raises(ValidationError):
        RetentionPolicy(keep_last=-1)


def test_to_rows() -> None:
    sets = days_back(2)
    plan = plan_retention(sets, policy(keep_last=1), NOW)
    assert plan.to_rows() == [
        {
            "server": "prod",
            "set_id": sets[0].set_id,
            "created_at": "2026-04-30T02:00:00+00:00",
            "action": "keep",
            "reasons": "last 1, newest verified",
            "verified": True,
            "pinned": False,
            "pinned_until": None,
            "trust": "keyless",
            "size": 100,
            "lock_mode": None,
            "locked_until": None,
            "prunable_after": None,
        },
        {
            "server": "prod",
            "set_id": sets[1].set_id,
            "created_at": "2026-04-29T02:00:00+00:00",
            "action": "delete",
            "reasons": "not kept by any rule",
            "verified": True,
            "pinned": False,
            "pinned_until": None,
            "trust": "keyless",
            "size": 100,
            "lock_mode": None,
            "locked_until": None,
            "prunable_after": None,
        },
    ]


# --------------------------------------------------------------------------------------------
# execute_plan on a real local store
# --------------------------------------------------------------------------------------------


def _write_set(store: LocalObjectStore, s: BackupSetSummary) -> list[str]:
    """A set on disk with a real (keyless) manifest, so the catalog can read it again."""
    keys = [
        f"{s.prefix}database.dump",
        f"{s.prefix}agents/agent-1.af",
        f"{s.prefix}agents/agent-2.af",
    ]
    stored = [store.put_bytes(key, b"data") for key in keys]
    assert s.created_at is not None
    manifest = hand_made_manifest(
        s.set_id,
        s.server,
        keys[0],
        {o.key: ManifestObject(size=o.size, sha256=o.sha256) for o in stored},
        created_at=s.created_at,
        alembic_revision=None,
        base_url="http://127.0.0.1:9",
        postgres_version="18.1",
        pgvector_version=None,
    )
    return [*keys, write_manifest(store, manifest)]


def _two_sets(store: LocalObjectStore) -> tuple[RetentionPlan, list[str], list[str]]:
    old, new = days_back(2)[1], days_back(2)[0]
    old_keys, new_keys = _write_set(store, old), _write_set(store, new)
    plan = plan_retention([old, new], policy(keep_last=1), NOW)
    assert deleted(plan) == {old.set_id}
    return plan, old_keys, new_keys


def test_execute_plan_deletes_only_planned_sets(tmp_path) -> None:
    store = LocalObjectStore(tmp_path)
    plan, old_keys, new_keys = _two_sets(store)
    messages: list[str] = []
    assert execute_plan(store, plan, log=messages.append) == [plan.delete[0].set.prefix]
    assert not any(store.exists(k) for k in old_keys)
    assert list(store.list(plan.delete[0].set.prefix)) == []
    assert all(store.exists(k) for k in new_keys)
    assert all(store.read_bytes(k) == b"data" for k in new_keys[:-1])
    assert len(messages) == 1


def test_execute_plan_skips_set_pinned_after_planning(tmp_path) -> None:
    store = LocalObjectStore(tmp_path)
    plan, old_keys, _ = _two_sets(store)
    doomed = plan.delete[0].set
    record_pin(store, doomed.server, doomed.set_id, True, None)
    messages: list[str] = []
    reread = lambda s: summarize_set(store, s)  # noqa: E731 - as the prune flow passes it
    assert execute_plan(store, plan, log=messages.append, reread=reread) == []
    assert all(store.exists(k) for k in old_keys)
    assert "pinned" in messages[0]


def test_execute_plan_rereads_and_deletes_a_set_still_prunable(tmp_path) -> None:
    """The control of the test above: the same re-read, no pin, and the set goes."""
    store = LocalObjectStore(tmp_path)
    plan, old_keys, _ = _two_sets(store)
    reread = lambda s: summarize_set(store, s)  # noqa: E731
    assert execute_plan(store, plan, reread=reread) == [plan.delete[0].set.prefix]
    assert not any(store.exists(k) for k in old_keys)


def test_interrupted_prune_leaves_an_incomplete_set(tmp_path) -> None:
    class FailingStore(LocalObjectStore):
        def delete_prefix(self, prefix: str) -> int:
            raise OSError("connection lost")

    store = FailingStore(tmp_path)
    plan, old_keys, new_keys = _two_sets(store)
    with pytest.raises(OSError, match="connection lost"):
        execute_plan(store, plan)
    manifest, *objects = old_keys[-1:] + old_keys[:-1]
    assert not store.exists(manifest)
    assert all(store.exists(k) for k in objects)
    assert all(store.exists(k) for k in new_keys)
