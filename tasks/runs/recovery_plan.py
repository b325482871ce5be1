"""The one safe way out of an interrupted destructive run: a pure decision.

Why pure: ``letta-ops recover`` must take the same decision however often it is run, after
whatever crash, and an operator must be able to read why (``--dry-run``). The inputs are facts
read elsewhere: the run's journal (how far it got, and the backup set taken before it changed
anything), the database's alembic revision, and what the server answers now.

The rule: finish forward only when the database is verifiably where the run was going (the
target's alembic head, and for a rebuild every agent imported; the check after the start
decides the rest); otherwise put back the set taken before the run and start the version it
records. Nothing destructive started -> only start the server if it is down.

A move to PostgreSQL (``move-to-postgres``, or the first half of a SQLite server's
``upgrade``: its journal names the target, ``moved_to``) only ever read the SQLite file, so its
way out is the move's own undo, whatever step it stopped at: empty the target of what the move
created, prove the file unchanged, start the old version on it (``back-on-sqlite``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from .journal import JournalEntry, begun, last_step, steps_ended

Action = Literal["restore", "finish-forward", "start", "close", "rerun", "back-on-sqlite"]


@dataclass(frozen=True)
class RecoveryPlan:
    run_id: str
    operation: str
    server: str
    interrupted_at: str | None
    step_ended: bool
    action: Action
    reason: str
    #: The set to restore (restore), or whose version to start (start).
    backup_set: str | None = None
    #: The version to start and prove.
    version: str | None = None
    #: For finish-forward of a rollback: the set the server must match.
    target_set: str | None = None
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_recovery(
    journal: list[JournalEntry], revision: str | None, running_version: str | None
) -> RecoveryPlan:
    """Decide from the journal, the database's alembic revision and the running version."""
    facts = begun(journal)
    first = journal[0]
    step, ended = last_step(journal)
    done = steps_ended(journal)
    common = {
        "run_id": first.run_id,
        "operation": first.operation,
        "server": first.server,
        "interrupted_at": step,
        "step_ended": ended,
        "facts": facts,
    }
    before_set = facts.get("backup_set")
    from_version = facts.get("from_version")
    to_version = facts.get("to_version")
    at_target = revision is not None and revision == facts.get("target_revision")

    if first.operation == "restore" and facts.get("engine") == "sqlite":
        # A SQLite target is whole at every moment (the copy goes in by one rename) and needs
        # no password: recovery puts the set's copy there again, as the run would have.
        started = f", start Letta {to_version} and prove it" if facts.get("start") else ""
        return RecoveryPlan(
            **common,
            action="restore",
            backup_set=facts.get("set"),
            version=to_version if facts.get("start") else None,
            reason=f"a restore of {facts.get('set')} onto the SQLite file {facts.get('target')} "
            f"was interrupted at '{step}'; the file is whole (old or new): put the set's copy "
            f"there again{started}",
        )
    if first.operation == "restore":
        return RecoveryPlan(
            **common,
            action="rerun",
            reason=f"a restore of {facts.get('set')} onto {facts.get('target')} was interrupted "
            "at this step; the target holds a partial copy: run the same restore with --force",
        )
    if step is None:
        if running_version:
            return RecoveryPlan(
                **common,
                action="close",
                reason=f"the run stopped before its first destructive step and Letta "
                f"{running_version} answers: nothing to undo",
            )
        return RecoveryPlan(
            **common,
            action="start",
            version=from_version,
            backup_set=before_set,
            reason="the run stopped before its first destructive step; the server is down: "
            f"start Letta {from_version} again",
        )
    if facts.get("moved_to"):
        fallback = f"; if the file changed, restore {before_set} instead" if before_set else ""
        return RecoveryPlan(
            **common,
            action="back-on-sqlite",
            version=from_version,
            backup_set=before_set,
            reason=f"a move to PostgreSQL was interrupted at '{step}'; the SQLite file was only "
            f"read: empty {facts['moved_to']} of what the move created, prove the file "
            f"unchanged and start Letta {from_version} on it{fallback}",
        )
    forward = at_target and (
        first.operation != "upgrade"
        or facts.get("strategy") != "rebuild"
        or "import agent files" in done
    )
    if first.operation == "rollback":
        forward = at_target and "restore the set's dump" in done
    if forward:
        what = (
            f"the database is at Letta {to_version}'s alembic head"
            + (" with every agent imported" if facts.get("strategy") == "rebuild" else "")
            if first.operation == "upgrade"
            else f"the database holds the set {facts.get('target_set')} in full"
        )
        return RecoveryPlan(
            **common,
            action="finish-forward",
            version=to_version,
            backup_set=before_set,
            target_set=facts.get("target_set"),
            reason=f"{what}: start Letta {to_version} and verify; if the check fails, "
            f"restore {before_set} instead",
        )
    return RecoveryPlan(
        **common,
        action="restore",
        version=from_version,
        backup_set=before_set,
        reason=f"the database is not verifiably at the target (revision {revision or 'none'}, "
        f"interrupted at '{step}'): restore {before_set}, taken before the run, and start "
        f"Letta {from_version}",
    )
