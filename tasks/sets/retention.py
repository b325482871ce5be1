"""Retention of backup sets (grandfather-father-son), as a pure plan plus a small executor.

Why split it: deciding what to delete is where the risk is, so :func:`plan_retention` is a
pure function over summaries that tests can drive exhaustively and that ``--dry-run`` can
print; :func:`execute_plan` only carries out a plan, in an order that never leaves a manifest
pointing at missing objects.

Rules (DESIGN.md, "Backup sets"): sets are ordered by *manifest* time (object times change
when a store is copied or restored, the manifest does not), and retention never deletes the
newest verified set of a server nor a pinned set (e.g. the one taken before an upgrade), and
never a set it cannot believe: a legacy or untrusted set (see ``tasks/sets/catalog.py``) is
*quarantined* -- kept and reported until an operator removes it with ``backups forget`` -- so
whoever can write to the bucket cannot get sets deleted by damaging their manifests. A pin with
an end date protects the set until then; the plan says when each pin ends.

S3 Object Lock: a set with an object still locked is never deleted (S3 would refuse, or in a
versioned bucket only hide it behind delete markers); the plan keeps it, says why and from
when it becomes prunable. :func:`plan_around_locks` reads the locks from the store itself
(records added to a set later may be locked longer than its manifest says).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, model_validator

from ..errors import Refused
from ..store.object_lock import ObjectRetention
from ..store.objects import ObjectStore
from .manifest import MANIFEST_NAME

REASON_NEWEST_VERIFIED = "newest verified"
REASON_PINNED = "pinned"
REASON_INCOMPLETE_RUNNING = "incomplete, may still be running"
REASON_UNSELECTED = "not kept by any rule"
REASON_QUARANTINED = "quarantined"


#: Sets taken right before a destructive step: pinned for :data:`SAFETY_PIN_DAYS_ENV` days.
SAFETY_PURPOSES = frozenset({"pre-upgrade", "pre-rollback", "pre-rename"})
SAFETY_PIN_DAYS_ENV = "LETTA_OPS_SAFETY_PIN_DAYS"
DEFAULT_SAFETY_PIN_DAYS = 30.0


def safety_pin_until(
    purpose: str, started: datetime, environ: Mapping[str, str] | None = None
) -> datetime | None:
    """When the pin of a set taken for ``purpose`` ends: ``LETTA_OPS_SAFETY_PIN_DAYS`` (30)
    after it was taken for a safety set (0: never ends); None for other sets (a manual
    ``--pin`` holds until ``backups unpin``)."""
    if purpose not in SAFETY_PURPOSES:
        return None
    text = ((os.environ if environ is None else environ).get(SAFETY_PIN_DAYS_ENV) or "").strip()
    try:
        days = float(text) if text else DEFAULT_SAFETY_PIN_DAYS
    except ValueError:
        days = -1.0
    if not days >= 0 or days > 36500:
        raise Refused(
            f"{SAFETY_PIN_DAYS_ENV}={text!r} is not a number of days; set it to how long sets "
            "taken before an upgrade, rollback or rename stay pinned (e.g. 30; 0 for good)."
        )
    return None if days == 0 else _utc(started) + timedelta(days=days)


@dataclass(frozen=True)
class BackupSetSummary:
    """What retention needs to know about one backup set (built from a store listing)."""

    server: str
    set_id: str
    prefix: str  # store key prefix of the set, ends with "/"
    created_at: datetime | None  # manifest time; None when the set has no manifest
    complete: bool  # has a manifest
    verified: bool
    pinned: bool
    purpose: str | None
    last_modified: datetime  # newest object in the set: the age of an incomplete set
    size: int
    #: S3 Object Lock still (or once) holding the set's objects: from its manifest, or read
    #: from the store for the sets a plan would delete.
    lock: ObjectRetention | None = None
    #: How far the set is believed (tasks/sets/authentication.py): trusted, keyless, legacy or
    #: untrusted, and why not when it is not.
    trust: str = "keyless"
    trust_reason: str | None = None
    #: The newest authenticated verification: verified, failed or unverified.
    verification: str = "unverified"
    #: When the pin ends (None: for good, or not pinned).
    pinned_until: datetime | None = None
    letta_version: str | None = None

    def locked(self, now: datetime) -> bool:
        return self.lock is not None and self.lock.active(_utc(now))

    @property
    def believed(self) -> bool:
        """Whether the set may be chosen or pruned by a rule: its manifest authenticates (or
        the repository is keyless)."""
        return self.trust in ("trusted", "keyless")

    @property
    def quarantined(self) -> bool:
        """Legacy and untrusted sets: shown, never chosen, never deleted by retention."""
        return not self.believed

    @property
    def status(self) -> str:
        """What ``backups list`` shows: UNTRUSTED / LEGACY, else the verification state."""
        if self.trust == "untrusted":
            return "UNTRUSTED"
        if not self.complete:
            return "incomplete"
        if self.trust == "legacy":
            return "LEGACY"
        return self.verification.upper() if self.verification != "unverified" else "unverified"


class RetentionPolicy(BaseModel):
    """How many sets to keep per server; a set is kept if *any* rule selects it."""

    keep_last: int = Field(default=7, ge=0, description="Keep the newest N complete sets.")
    keep_daily: int = Field(
        default=7, ge=0, description="Keep the newest set of each of the last N UTC days."
    )
    keep_weekly: int = Field(
        default=4, ge=0, description="Keep the newest set of each of the last N ISO weeks."
    )
    keep_monthly: int = Field(
        default=6, ge=0, description="Keep the newest set of each of the last N months."
    )
    incomplete_grace_hours: float = Field(
        default=24,
        ge=0,
        description="Delete a set without a manifest only once its newest object is older "
        "than this (a backup may still be writing it).",
    )

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionPolicy:
        # A policy of all zeros would delete every unpinned set but one: almost surely a typo.
        if not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly):
            raise Refused(
                "A retention policy must keep something: set keep_last, keep_daily, "
                "keep_weekly or keep_monthly above zero."
            )
        return self


@dataclass
class Decision:
    """One set and why it is kept (or deleted); ``prunable_after`` is set when only an
    Object Lock keeps it: the moment the lock ends (None with a legal hold: when lifted)."""

    set: BackupSetSummary
    reasons: list[str] = field(default_factory=list)
    held_by_lock: bool = False

    @property
    def prunable_after(self) -> datetime | None:
        if not self.held_by_lock or self.set.lock is None:
            return None
        return self.set.lock.retain_until


@dataclass
class RetentionPlan:
    keep: list[Decision] = field(default_factory=list)
    delete: list[Decision] = field(default_factory=list)

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per set, by server then newest first, for a table or JSON output."""
        rows = [(d, "keep") for d in self.keep] + [(d, "delete") for d in self.delete]
        rows.sort(key=lambda row: (row[0].set.server, -_sort_time(row[0].set).timestamp()))
        return [
            {
                "server": d.set.server,
                "set_id": d.set.set_id,
                "created_at": d.set.created_at.isoformat() if d.set.created_at else None,
                "action": action,
                "reasons": ", ".join(d.reasons),
                "verified": d.set.verified,
                "pinned": d.set.pinned,
                "pinned_until": _iso(d.set.pinned_until),
                "trust": d.set.trust,
                "size": d.set.size,
                "lock_mode": d.set.lock.mode if d.set.lock else None,
                "locked_until": _iso(d.set.lock.retain_until) if d.set.lock else None,
                "prunable_after": _iso(d.prunable_after),
            }
            for d, action in rows
        ]


def _iso(moment: datetime | None) -> str | None:
    return _utc(moment).isoformat() if moment else None


def lock_reason(lock: ObjectRetention) -> str:
    """Why a set the policy would delete stays, and from when it can go."""
    if lock.retain_until is None:
        return "under an S3 legal hold: prunable once the hold is lifted"
    until = _utc(lock.retain_until).isoformat()
    return f"locked ({lock.mode.lower()}) until {until}: prunable after that"


def _held_or_deleted(
    summary: BackupSetSummary, reasons: list[str], now: datetime
) -> tuple[bool, Decision]:
    """(kept?, decision) for a set no rule keeps: an active Object Lock keeps it anyway."""
    if summary.locked(now):
        assert summary.lock is not None
        return True, Decision(summary, [lock_reason(summary.lock)], held_by_lock=True)
    return False, Decision(summary, reasons)


def _utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC, so buckets and ages never depend on the host's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sort_time(summary: BackupSetSummary) -> datetime:
    return _utc(summary.created_at or summary.last_modified)


def _day(moment: datetime) -> object:
    return moment.date()


def _week(moment: datetime) -> object:
    return moment.isocalendar()[:2]  # (ISO year, ISO week): a week spanning New Year is one


def _month(moment: datetime) -> object:
    return (moment.year, moment.month)


def _pin_reason(summary: BackupSetSummary) -> str:
    until = summary.pinned_until
    return f"{REASON_PINNED} until {_iso(until)}" if until else REASON_PINNED


def _plan_server(
    sets: list[BackupSetSummary], policy: RetentionPolicy, now: datetime
) -> tuple[list[Decision], list[Decision]]:
    keep: list[Decision] = []
    delete: list[Decision] = []
    for summary in sets:
        if summary.quarantined:
            why = summary.trust_reason or summary.trust
            keep.append(Decision(summary, [f"{REASON_QUARANTINED} ({summary.trust}: {why})"]))
    sets = [s for s in sets if not s.quarantined]
    complete = [s for s in sets if s.complete and s.created_at is not None]
    # Newest first by manifest time; set ids (timestamp + run id) break ties deterministically.
    complete.sort(key=lambda s: (_sort_time(s), s.set_id), reverse=True)
    newest_verified = next((s for s in complete if s.verified), None)

    # restic semantics: each rule counts independently the buckets that contain a set, newest
    # first; the first set met in a bucket is the newest of that bucket.
    bucket_rules: list[tuple[str, int, Callable[[datetime], object]]] = [
        ("daily", policy.keep_daily, _day),
        ("weekly", policy.keep_weekly, _week),
        ("monthly", policy.keep_monthly, _month),
    ]
    seen: dict[str, list[object]] = {name: [] for name, _, _ in bucket_rules}
    for index, summary in enumerate(complete):
        reasons: list[str] = []
        if index < policy.keep_last:
            reasons.append(f"last {policy.keep_last}")
        created = _sort_time(summary)
        for name, count, bucket_of in bucket_rules:
            bucket = bucket_of(created)
            if bucket not in seen[name] and len(seen[name]) < count:
                seen[name].append(bucket)
                reasons.append(name)
        if summary is newest_verified:
            reasons.append(REASON_NEWEST_VERIFIED)
        if summary.pinned:
            reasons.append(_pin_reason(summary))
        if reasons:
            keep.append(Decision(summary, reasons))
        else:
            kept, decision = _held_or_deleted(summary, [REASON_UNSELECTED], now)
            (keep if kept else delete).append(decision)

    grace = timedelta(hours=policy.incomplete_grace_hours)
    incomplete = [s for s in sets if not (s.complete and s.created_at is not None)]
    incomplete.sort(key=lambda s: (_utc(s.last_modified), s.set_id), reverse=True)
    for summary in incomplete:
        if _utc(now) - _utc(summary.last_modified) > grace:
            reason = f"incomplete, older than {policy.incomplete_grace_hours:g}h"
            if summary.pinned:
                keep.append(Decision(summary, [REASON_PINNED]))
            else:
                kept, decision = _held_or_deleted(summary, [reason], now)
                (keep if kept else delete).append(decision)
        else:
            reasons = [REASON_INCOMPLETE_RUNNING] + ([REASON_PINNED] if summary.pinned else [])
            keep.append(Decision(summary, reasons))
    return keep, delete


def plan_retention(
    sets: list[BackupSetSummary], policy: RetentionPolicy, now: datetime
) -> RetentionPlan:
    """Decide, per server independently, which sets to keep and which to delete.

    Pure: no store access, so the same plan can be shown (dry run) and then executed.
    """
    plan = RetentionPlan()
    by_server: dict[str, list[BackupSetSummary]] = {}
    for summary in sets:
        by_server.setdefault(summary.server, []).append(summary)
    for server in sorted(by_server):
        keep, delete = _plan_server(by_server[server], policy, now)
        plan.keep.extend(keep)
        plan.delete.extend(delete)
    return plan


def plan_around_locks(
    store: ObjectStore, sets: list[BackupSetSummary], policy: RetentionPolicy, now: datetime
) -> RetentionPlan:
    """:func:`plan_retention`, with the Object Lock of every set it would delete read from
    the store (the newest lock of any object version under the set), then planned again.

    Only the candidates are read (one request per object), so kept sets cost nothing; a store
    that cannot lock (a directory, a bucket without Object Lock) answers at once.
    """
    first = plan_retention(sets, policy, now)
    if not first.delete:
        return first
    read = {d.set.prefix: store.active_lock(d.set.prefix, _utc(now)) for d in first.delete}
    updated = [replace(s, lock=read[s.prefix]) if s.prefix in read else s for s in sets]
    return plan_retention(updated, policy, now)


def execute_plan(
    store: ObjectStore,
    plan: RetentionPlan,
    log: Callable[[str], None] = lambda m: None,
    reread: Callable[[BackupSetSummary], BackupSetSummary | None] | None = None,
) -> list[str]:
    """Delete the plan's sets; return the prefixes actually deleted.

    The manifest goes first: if the prune is interrupted, what remains is an *incomplete* set
    (never offered for restore, removed by a later run) rather than a manifest that promises
    objects that are gone. Pins, trust and Object Locks are re-checked just before deleting
    (``reread`` reads the set again from the catalog) because the plan may have been made (and
    shown) a while ago: a locked object is never sent a delete.
    """
    for decision in plan.delete:
        # "srv/20260101T000000Z-a" without the slash would also match "...-ab/": refuse early.
        if not decision.set.prefix.endswith("/"):
            raise Refused(f"Backup set prefix {decision.set.prefix!r} must end with '/'.")
    deleted: list[str] = []
    for decision in plan.delete:
        summary = decision.set
        prefix = summary.prefix
        fresh = reread(summary) if reread is not None else summary
        if fresh is None or fresh.pinned or fresh.quarantined:
            log(f"Skipping {summary.server}/{summary.set_id}: pinned or quarantined since.")
            continue
        lock = store.active_lock(prefix, datetime.now(UTC))
        if lock is not None:
            log(f"Skipping {summary.server}/{summary.set_id}: {lock_reason(lock)}.")
            continue
        log(f"Deleting {summary.server}/{summary.set_id} ({', '.join(decision.reasons)}).")
        store.delete(prefix + MANIFEST_NAME)
        store.delete_prefix(prefix)
        deleted.append(prefix)
    return deleted
