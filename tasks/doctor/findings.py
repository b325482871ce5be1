"""What a doctor check finds: ok, an action with its fix, or skipped; and a check that raised, as a
finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import database_error_message
from ..letta.versions import (
    LettaVersion,
)

Status = Literal["ok", "action", "skipped"]

#: Version from which some columns are encrypted with ``LETTA_ENCRYPTION_KEY``.
ENCRYPTION_FROM = LettaVersion("0.12.0")
#: A dump and its restore need about twice the database's size (as the upgrade's pre-flight).
DUMP_SPACE_FACTOR = 2


@dataclass
class Finding:
    """One check's verdict: ``action`` means an operator must do ``fix``."""

    check: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def action(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "action", detail, fix)


def skipped(check: str, detail: str) -> Finding:
    return Finding(check, "skipped", detail)


def guarded(check: str, run: Callable[[], Finding | list[Finding]]) -> list[Finding]:
    """Run one check; an unexpected failure is itself a finding, never a crash of the report."""
    try:
        result = run()
    except Exception as exc:  # the doctor reports on broken servers: expect anything
        first = database_error_message(exc)
        return [action(check, f"the check failed: {first}", "Fix the error above and rerun.")]
    return result if isinstance(result, list) else [result]
