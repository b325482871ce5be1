"""Recover a Letta server from a destructive run that was interrupted (kill -9, a lost host).

The runbook this replaces, as one run:

1. find the server's runs whose journal began and never finished, and whose process is
   provably gone (its pid on this host, or its Prefect run is over); mark each ``crashed``
   in the audit history, with the step it stopped at, and its Prefect run Crashed;
2. read the newest one's journal, the database's alembic revision and what the server
   answers, and decide (``letta_ops.tasks.runs.recovery_plan``): finish forward when the database is
   verifiably at the target, else restore the backup set taken before the run and start the
   version it records; nothing destructive started -> start the old version if it is down;
3. take the server's destructive slot (a dead holder's is reclaimed at once) and do it,
   proving the result as the flows do (version, agents, per-table counts);
4. close the interrupted run's journal, so a second ``recover`` finds nothing to do. A crash
   of ``recover`` itself leaves the journal open: running it again takes the same way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.letta_database import LettaDatabase
from ..blocks.server_profile import ProfileError, ServerProfile, load_profile, open_backup_store
from ..tasks.audit.store import AuditStore
from ..tasks.errors import Failed, NeedsAction, Refused, database_error_message
from ..tasks.letta.api import LettaClient
from ..tasks.postgres.letta_schema import alembic_revision, database_exists
from ..tasks.postgres.sequence_repair import repair_sequences
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import (
    TERMINAL_STATES,
    flow_run_state,
    publish_report,
    run_name,
    tag_current_run,
)
from ..tasks.runs.journal import (
    JournalEntry,
    RunJournal,
    last_step,
    noted,
    process_alive,
    unfinished_runs,
)
from ..tasks.runs.lock import DeadRun
from ..tasks.runs.recovery_plan import RecoveryPlan, plan_recovery
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.catalog import load_manifest
from ..tasks.store.objects import ObjectStore
from .steps.destructive_run import destructive_section
from .steps.move_steps import SqliteFileChanged, journaled_target, undo_interrupted_move
from .steps.restore_server import (
    prove_server_matches_set,
    restore_server_from_set,
    start_set_version,
)
from .steps.sqlite_restore import restore_sqlite_file_from_set, restore_sqlite_server_from_set
from .verify import CountDifference


class RestoreMustBeRerun(NeedsAction):
    """An interrupted restore onto another database: only its operator can rerun it."""


class RecoveryRefused(Refused):
    """The interrupted run is not this profile's to put right; nothing was changed."""


class RecoveryFailed(Failed):
    """Recovery ran and the server is still not proven consistent; run recover again."""


# --------------------------------------------------------------------------- the report


class RecoveryResult(ReportPart):
    """What recovery did; which fields are set depends on the way out (close, start,
    finish-forward, restore)."""

    ok: bool = Field(description="The server is proven consistent again.")
    done: str | None = Field(None, description="What was done, in one line.")
    error: str | None = Field(None, description="Why it failed (None: it did not).")
    version: str | None = Field(None, description="The version running after.")
    agents: int | None = None
    agents_equal: bool | None = Field(None, description="The set's agents, by id and name.")
    agents_missing: list[str] | None = None
    agents_unexpected: list[str] | None = None
    agents_expected: int | None = Field(None, description="Finishing an upgrade forward.")
    count_differences: list[CountDifference] | None = None
    sequences: list[dict[str, Any]] | None = Field(
        None,
        description="The sequence repair's changes; their keys vary by action (action, "
        "sequence, table, column, from, to).",
    )
    set: str | None = Field(None, description="The set restored (restore).")
    seconds: float | None = Field(None, description="How long the restore took.")
    pid: int | None = Field(None, description="The started server's pid (start).")
    base_url: str | None = None
    auth: str | None = Field(None, description="'password required' or 'OPEN' (start).")
    dropped: int | None = Field(
        None, description="Objects of an interrupted move dropped from its target (back-on-sqlite)."
    )
    sqlite_sha256: str | None = Field(
        None, description="The SQLite file's sha256, proven as the move found it (back-on-sqlite)."
    )


class RecoverReport(FlowReport):
    """``recover()``'s result and ``letta-ops recover --json``."""

    model_config = ConfigDict(validate_assignment=True)

    server: str
    outcome: str = Field(description="nothing to recover, planned, recovered or failed.")
    message: str | None = Field(None, description="Only when there is nothing to recover.")
    interrupted_run: str | None = Field(None, description="The newest interrupted run's id.")
    why_dead: str | None = Field(None, description="Why its process no longer runs it.")
    plan: RecoveryPlan | None = Field(
        None,
        description="The decision (letta_ops.tasks.runs.recovery_plan); its facts are the "
        "interrupted run's journal as it began, whose keys vary by operation.",
    )
    others: list[str] | None = Field(None, description="Older interrupted runs, left open.")
    result: RecoveryResult | None = Field(None, description="None: planned only.")
    crashed: str | None = Field(None, description="How the run is marked crashed.")


# --------------------------------------------------------------------------- finding runs


def why_dead(begin: JournalEntry) -> str | None:
    """Why the process that began this journal provably no longer runs it (None: may run)."""
    if process_alive(begin.host, begin.pid, since=begin.at) is False:
        return f"its process (pid {begin.pid} on {begin.host}) is gone"
    state = flow_run_state(begin.run_id)
    if state in TERMINAL_STATES:
        return f"its Prefect run is {state.lower()}"
    return None


def interrupted_runs(server: str) -> list[tuple[list[JournalEntry], str]]:
    """Journals of ``server`` left unfinished by a dead run, newest first, with why dead."""
    found = []
    for journal in unfinished_runs(AuditStore.from_env(), server):
        why = why_dead(journal[0])
        if why:
            found.append((journal, why))
    return found


def mark_crashed(journal: list[JournalEntry], why: str) -> str:
    """The run's audit record says ``crashed`` at its last step; its Prefect run Crashed."""
    step, ended = last_step(journal)
    where = f"after '{step}'" if ended else f"during '{step}'" if step else "before its first step"
    message = f"interrupted {where}: {why}"
    store = AuditStore.from_env()
    for record in store.find(journal[0].run_id):
        if record.outcome == "running":
            record.outcome = "crashed"
            record.error = message
            record.ended_at = datetime.now(UTC)
            record.details = {**record.details, "interrupted_step": step}
            store.save(record)
    if flow_run_state(journal[0].run_id) in {"RUNNING", "PENDING", "PAUSED", "SCHEDULED"}:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                UUID(journal[0].run_id[:36]), Crashed(message=message), force=True
            )
    return message


# --------------------------------------------------------------------------- doing it


def running_version(profile: ServerProfile) -> str | None:
    try:
        with LettaClient(profile.server) as client:
            return client.health().get("version")
    except Exception:  # noqa: BLE001 - down is an answer
        return None


def revision_now(database) -> str | None:
    """The alembic revision; None for a database a killed run dropped and never created."""
    try:
        return alembic_revision(database)
    except Exception:
        if not database_exists(database):
            return None
        raise


def _database_for(profile: ServerProfile, plan: RecoveryPlan):
    """The database with the reset mode the interrupted run proved and used: it may hold
    nothing now (dropped by a recreate), so the role is not probed again."""
    database = profile.require_database()
    mode = plan.facts.get("reset_mode")
    return database.model_copy(update={"reset_mode": mode}) if mode else database


@task(
    name="restore-pre-operation-set", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.PG_RESTORE
)
def restore_step(
    profile: ServerProfile, store: ObjectStore, backup_set: str, file_only: bool = False
) -> dict[str, Any]:
    """The set back under the server (stopped, put back, its version started, proven); with
    ``file_only`` (an interrupted restore onto a SQLite file no server runs on) only the copy
    put in place and its counts proven."""
    manifest = load_manifest(store, *backup_set.split("/"))
    if profile.sqlite is not None and file_only:
        return restore_sqlite_file_from_set(profile.sqlite, store, manifest)
    if profile.sqlite is not None:
        return restore_sqlite_server_from_set(profile, store, manifest)
    return restore_server_from_set(profile, store, manifest)


@task(name="finish-forward", cache_policy=NO_CACHE)
def finish_forward_step(
    profile: ServerProfile, store: ObjectStore, plan: RecoveryPlan, timeout: float
) -> dict[str, Any]:
    """Start the target version on the database as it is, repair sequences, and prove it:
    a rollback's target set exactly; an upgrade's agents as before (by id for migrate, by
    count for rebuild, whose renames the journal's set does not know)."""
    database = profile.require_database()
    if running_version(profile) != plan.version:
        profile.runtime.stop()
        start_set_version(
            profile.runtime, database, plan.version, timeout, log=get_run_logger().info
        )
    sequences = repair_sequences(database).to_dict()
    with LettaClient(profile.server) as client:
        if plan.operation == "rollback":
            target = load_manifest(store, *plan.target_set.split("/"))
            proof = prove_server_matches_set(client, database, target)
            return {**proof, "sequences": sequences["changes"]}
        before = load_manifest(store, *plan.backup_set.split("/"))
        live = {a["id"]: a["name"] for a in client.list_agents()}
        version = client.health()["version"]
    expected = {a.id for a in before.agents}
    same = (
        set(live) == expected
        if plan.facts.get("strategy") != "rebuild"
        else len(live) == len(expected)
    )
    return {
        "ok": same and version == plan.version,
        "version": version,
        "agents": len(live),
        "agents_expected": len(expected),
        "sequences": sequences["changes"],
    }


@dataclass(frozen=True)
class InterruptedMove:
    """What undoing an interrupted move needs beyond its plan: the target (with its password,
    which the journal never holds) and the file's sha256 as the move found it."""

    target: LettaDatabase
    sqlite_sha256: str | None


@task(name="undo-interrupted-move", cache_policy=NO_CACHE)
def back_on_sqlite_step(
    profile: ServerProfile, move: InterruptedMove, plan: RecoveryPlan, timeout: float
) -> dict[str, Any]:
    """The move's undo (:func:`undo_interrupted_move`), then the old version proven serving."""
    assert profile.sqlite is not None
    undone = undo_interrupted_move(
        profile, plan.version, profile.sqlite, move.target, move.sqlite_sha256, timeout
    )
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        agents = len(client.list_agents())
    return {
        "ok": version == plan.version,
        "done": f"emptied {plan.facts['moved_to']} of the move's {undone['dropped']} objects, "
        f"started Letta {version} on the unchanged SQLite file",
        "version": version,
        "agents": agents,
        **undone,
    }


def interrupted_move(
    profile: ServerProfile, plan: RecoveryPlan, journal: list[JournalEntry]
) -> InterruptedMove:
    """Refused in one sentence, before anything changes, when the SQLite file or the target
    cannot be named as the run named them."""
    if profile.sqlite is None:
        raise ProfileError(
            f"Run {plan.run_id} moved {profile.name} off its SQLite file "
            f"{plan.facts.get('sqlite_file', '')}; name that file (LETTA_OPS_SQLITE_DB=PATH) "
            "and recover again."
        )
    target = journaled_target(
        plan.facts["moved_to"], plan.facts.get("target_database"), plan.run_id
    )
    return InterruptedMove(target, noted(journal, "sqlite_sha256"))


def require_same_target(plan: RecoveryPlan, profile: ServerProfile) -> None:
    """An interrupted SQLite restore is put right only on the file it was writing: the
    profile must name that file (``LETTA_OPS_SQLITE_DB``), or nothing is done."""
    if plan.operation != "restore" or plan.action != "restore":
        return
    target = plan.facts.get("target")
    if profile.sqlite is None or str(profile.sqlite.path) != target:
        raise RecoveryRefused(
            f"Run {plan.run_id} restored {plan.backup_set} onto the SQLite file {target}; "
            f"recover it with LETTA_OPS_SQLITE_DB={target} LETTA_OPS_SERVER_NAME={plan.server} "
            "letta-ops recover."
        )


def execute(
    plan: RecoveryPlan,
    profile: ServerProfile,
    store: ObjectStore | None,
    timeout: float,
    move: InterruptedMove | None = None,
) -> dict[str, Any]:
    """Carry the plan out; the result says ``ok`` and what was done."""
    logger = get_run_logger()
    if plan.action == "back-on-sqlite":
        assert move is not None
        try:
            return back_on_sqlite_step(profile, move, plan, timeout)
        except SqliteFileChanged:
            if store is None or plan.backup_set is None:
                raise
            logger.warning("the SQLite file changed since the move read it: restoring the set")
    if plan.action == "close":  # ("rerun" never gets here: the flow refuses it first)
        return {"ok": True, "done": plan.reason}
    if plan.action == "start":
        database = profile.sqlite or profile.require_database()
        record = start_set_version(
            profile.runtime, database, plan.version, timeout, log=logger.info
        )
        return {"ok": True, "done": f"started Letta {record['version']}", **record}
    assert store is not None
    if plan.action == "finish-forward":
        try:
            forward = finish_forward_step(profile, store, plan, timeout)
        except Exception as exc:  # the restore below is the way out
            forward = {"ok": False, "error": database_error_message(exc)}
        if forward["ok"]:
            return {"ok": True, "done": f"finished forward on Letta {plan.version}", **forward}
        logger.warning(
            "finishing forward did not verify (%s); restoring %s", forward, plan.backup_set
        )
    file_only = plan.operation == "restore" and plan.version is None
    restored = restore_step(profile, store, plan.backup_set, file_only)
    started = f" and started Letta {plan.version}" if plan.version else ""
    return {**restored, "done": f"restored {plan.backup_set}{started}"}


@flow(name="letta-recover", flow_run_name=run_name("recover"))
def recover(
    server: str | None = None,
    store: str | None = None,
    dry_run: bool = False,
    lock_timeout_seconds: float = 30,
    start_timeout_seconds: float = 240,
) -> RecoverReport:
    """Take ``server`` out of an interrupted destructive run (see the module docstring)."""
    with audited_run("recover", server, {"dry_run": dry_run, "store": store}) as audit:
        profile = load_profile(server, need_database=True)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "recover")
        found = interrupted_runs(profile.name)
        if not found:
            audit.update(outcome="planned" if dry_run else "nothing to recover")
            return RecoverReport(
                server=profile.name,
                outcome="nothing to recover",
                message=f"No interrupted destructive run of {profile.name} was found; "
                "nothing to recover.",
            )
        journal, why = found[0]
        # A SQLite file records no alembic revision: never "verifiably at the target", so an
        # interrupted run on SQLite is undone (the set taken before it put back), never finished.
        revision = None if profile.sqlite else revision_now(profile.require_database())
        plan = plan_recovery(journal, revision, running_version(profile))
        require_same_target(plan, profile)
        report = RecoverReport(
            server=profile.name,
            outcome="planned",
            interrupted_run=plan.run_id,
            why_dead=why,
            plan=plan,
            others=[j[0].run_id for j, _ in found[1:]],
        )
        audit.update(interrupted_run=plan.run_id, action=plan.action, backup_set=plan.backup_set)
        if dry_run:
            audit.update(outcome="planned")
            return report
        move = interrupted_move(profile, plan, journal) if plan.action == "back-on-sqlite" else None
        crashed = mark_crashed(journal, why)
        if plan.action == "rerun":  # letta-ops cannot redo it: the target's password is not
            # stored anywhere (by design); the operator reruns the same restore.
            raise RestoreMustBeRerun(
                f"Run {plan.run_id} ({crashed}): {plan.reason}; then 'letta-ops recover' "
                "finds nothing more to do."
            )
        if profile.sqlite is None:
            profile.database = _database_for(profile, plan)
        object_store = open_backup_store(store, server) if plan.backup_set else None
        audit.update(store=object_store)
        # The journal proves the run dead: its slot is taken whatever the Prefect API behind
        # it remembers (a temporary server's lease is gone with it).
        begin = journal[0]
        proof = [DeadRun(begin.run_id, begin.host, begin.pid, why)]
        proof += [DeadRun(j[0].run_id, j[0].host, j[0].pid, w) for j, w in found[1:]]
        with destructive_section(
            "recover",
            profile.name,
            audit,
            lock_timeout_seconds=lock_timeout_seconds,
            database=profile.database,
            proven_dead=proof,
        ):
            result = execute(plan, profile, object_store, start_timeout_seconds, move)
        report.result = result
        report.crashed = crashed
        if not result.get("ok"):
            report.outcome = "failed"
            publish_report(profile.name, "recover", render_recover_markdown(report))
            raise RecoveryFailed(
                f"Recovering {profile.name} from run {plan.run_id} failed "
                f"({result.get('error') or result}); the run stays open: fix the cause and "
                "run 'letta-ops recover' again."
            )
        closing = RunJournal(plan.run_id, plan.server, plan.operation, AuditStore.from_env())
        closing.finish(f"recovered by {audit.record_id}: {result['done']}")
        audit.update(versions_to=plan.version, rollback_outcome=result["done"])
        report.outcome = "recovered"
        publish_report(profile.name, "recover", render_recover_markdown(report))
        return report


def render_recover_markdown(report: RecoverReport) -> str:
    plan = report.plan
    lines = [
        f"# Recover {report.server}: **{report.outcome}**",
        "",
        f"- interrupted run {plan.run_id} ({plan.operation}) at "
        f"'{plan.interrupted_at}': {report.why_dead}",
        f"- decision: {plan.action}: {plan.reason}",
    ]
    if report.result:
        lines.append(f"- result: {report.result.done}")
    return "\n".join(lines)


__all__ = ["RecoverReport", "RecoveryFailed", "RecoveryResult", "interrupted_runs", "recover"]
