"""S3 Object Lock as letta-ops uses it: the modes, a set's retention, the lock new objects get, and
the bucket's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import Refused

# --------------------------------------------------------------------------------------------
# S3 Object Lock
# --------------------------------------------------------------------------------------------

#: S3 Object Lock's retention modes: GOVERNANCE can be lifted by a principal allowed
#: s3:BypassGovernanceRetention, COMPLIANCE by nobody (not even the account root) until it ends.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: Mode reported for an object under a legal hold: locked with no end date.
LEGAL_HOLD = "LEGAL_HOLD"


def parse_lock_mode(text: str | None) -> str:
    """``governance`` / ``compliance`` in any case -> S3's spelling; GOVERNANCE when empty."""
    mode = (text or "GOVERNANCE").strip().upper()
    if mode not in LOCK_MODES:
        raise Refused(f"Object Lock mode {text!r} is not known; use 'governance' or 'compliance'.")
    return mode


@dataclass(frozen=True)
class ObjectRetention:
    """A lock on stored objects: its mode and the moment it ends (None: a legal hold, which
    ends only when someone lifts it)."""

    mode: str
    retain_until: datetime | None

    def active(self, now: datetime) -> bool:
        """Whether S3 still refuses to delete the object at ``now``."""
        return self.retain_until is None or self.retain_until > now

    def describe(self) -> str:
        if self.retain_until is None:
            return "under a legal hold (no end date)"
        return f"locked ({self.mode.lower()}) until {self.retain_until.isoformat()}"


@dataclass(frozen=True)
class ObjectLock:
    """What a backup asks for: every object written gets ``mode`` retention for ``days``.

    ``days`` may be fractional (S3 takes a retain-until *date* per object, to the second);
    operators use whole days, tests use seconds.
    """

    mode: str
    days: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_lock_mode(self.mode))
        if not self.days > 0:
            raise Refused(f"Object Lock days must be above zero, not {self.days!r}.")

    def retention(self, now: datetime) -> ObjectRetention:
        """The retention of objects written from ``now``: rounded up to a whole second,
        because S3 stores retain-until dates to the second."""
        until = now.astimezone(UTC) + timedelta(days=self.days)
        if until.microsecond:
            until = until.replace(microsecond=0) + timedelta(seconds=1)
        return ObjectRetention(mode=self.mode, retain_until=until)


#: Environment variables that lock the objects of new backup sets (S3 Object Lock).
LOCK_DAYS_ENV = "LETTA_OPS_LOCK_DAYS"
LOCK_MODE_ENV = "LETTA_OPS_LOCK_MODE"


def object_lock_from_settings(
    days: float | str | None, mode: str | None, *, source: str = "--lock-days"
) -> ObjectLock | None:
    """An :class:`ObjectLock` from a flag, variable or block field; None when ``days`` is
    empty or zero (no lock asked for)."""
    if days is None or (isinstance(days, str) and not days.strip()):
        return None
    try:
        value = float(days)
    except ValueError as exc:
        raise Refused(f"{source} must be a number of days, not {days!r}.") from exc
    if value == 0:
        return None
    if value < 0:
        raise Refused(f"{source} must be a positive number of days, not {days!r}.")
    return ObjectLock(mode=parse_lock_mode(mode), days=value)


@dataclass(frozen=True)
class BucketLockConfiguration:
    """A bucket's Object Lock settings (``GetObjectLockConfiguration``)."""

    enabled: bool
    default_mode: str | None = None
    default_days: int | None = None
    default_years: int | None = None

    def describe(self) -> str:
        if not self.enabled:
            return "Object Lock is not enabled"
        if not self.default_mode:
            return "Object Lock is enabled, no default retention"
        period = (
            f"{self.default_days} day(s)" if self.default_days else f"{self.default_years} year(s)"
        )
        return f"Object Lock is enabled, default retention {self.default_mode.lower()} {period}"


def _retention_in(head: dict[str, Any]) -> ObjectRetention | None:
    """The Object Lock a ``head_object`` response reports (a legal hold first), if any."""
    if head.get("ObjectLockLegalHoldStatus") == "ON":
        return ObjectRetention(mode=LEGAL_HOLD, retain_until=None)
    until = head.get("ObjectLockRetainUntilDate")
    mode = head.get("ObjectLockMode")
    if not until or not mode:
        return None
    if isinstance(until, str):
        until = datetime.fromisoformat(until.replace("Z", "+00:00"))
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    return ObjectRetention(mode=str(mode), retain_until=until)


def _holds(kept: ObjectRetention | None, wanted: ObjectRetention) -> bool:
    """Whether ``kept`` locks at least as long as ``wanted``, in the same mode."""
    return (
        kept is not None
        and kept.mode == wanted.mode
        and (
            kept.retain_until is None
            or wanted.retain_until is None
            or kept.retain_until >= wanted.retain_until
        )
    )
