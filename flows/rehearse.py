"""Rehearse an upgrade on a copy of the server before touching the server.

The operator's question before an upgrade: will it work on *my* data, how long will the
server be down, what will change? A rehearsal answers with measurements instead of rules:

1. a verified backup set (a new one, or ``from_set``) is restored into a scratch database
   (the drill database, ``LETTA_OPS_DRILL_PG_URI``, when the role cannot create one);
2. the *current* version starts on it, on a free loopback port, in a state directory of its
   own, as a process on this host;
3. the real upgrade chain (the same steps, the same verification, the same automatic rollback)
   runs against that copy with the chosen strategy, each step timed;
4. the copy is stopped and dropped.

The production server is never stopped, written to or locked. The report (CLI, ``--json``,
artifact, audit record ``op: rehearse``) gives the outcome, the measured downtime per step,
counts before and after, renames, what agent files would not carry (rebuild), warnings from
the target's migration and log, and the target's health; ``upgrade --dry-run`` then shows the
measured downtime instead of a guess. A rehearsal that fails is the point: it ends Failed with
the cause and the log's last lines.
"""

from __future__ import annotations

import logging
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.letta_server import LettaServer
from ..blocks.process_runtime import LettaProcessRuntime
from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.errors import Failed, Refused, database_error_message
from ..tasks.postgres.embedded import free_loopback_port
from ..tasks.postgres.letta_inventory import agent_inventory
from ..tasks.postgres.letta_schema import table_row_counts
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.admission import require_dump, require_intact
from ..tasks.sets.catalog import load_manifest
from ..tasks.sets.verification import scratch_database
from .backup import backup
from .reports.upgrade import AgentVerification, NotCarried, TimedStep, UpgradePlan
from .steps.restore_server import restore_database_from_set, start_set_version
from .steps.server_steps import undoable
from .steps.upgrade_steps import UpgradeState, preflight, run_migrate, run_rebuild, undo_upgrade
from .verify import drill_target, refuse_live_drill_target, resolve_set

#: Log lines a rehearsal reports: errors, warnings and deprecations of the target.
NOTABLE = re.compile(r"\b(ERROR|CRITICAL|WARNING|WARN|Deprecat\w*)\b", re.IGNORECASE)


class RehearsalRefused(Refused):
    """A rehearsal that has no meaning here: a SQLite server or set (no PostgreSQL upgrade
    chain to run on a copy)."""


#: Why a SQLite server or set is not rehearsed: its upgrade is a move to PostgreSQL, not the
#: chain a rehearsal replays on a scratch copy.
SQLITE_HAS_NO_REHEARSAL = (
    "a rehearsal replays the PostgreSQL upgrade chain on a scratch copy, and a SQLite server's "
    "upgrade is a move to PostgreSQL first, which has no rehearsal: see its plan with "
    "`letta-ops upgrade --to VERSION --dry-run`"
)


def require_rehearsable(profile: ServerProfile, engine: str, label: str) -> None:
    """Refuse in one sentence a SQLite server, or a SQLite set, before anything runs."""
    if profile.sqlite is not None:
        raise RehearsalRefused(
            f"Server {profile.name!r} keeps its data in SQLite; {SQLITE_HAS_NO_REHEARSAL}."
        )
    if engine == "sqlite":
        raise RehearsalRefused(
            f"Backup set {label} holds a SQLite database; {SQLITE_HAS_NO_REHEARSAL}."
        )


class RehearsalFailed(Failed):
    """The upgrade failed on the copy; production was not touched."""


class RehearsalCopy(ReportPart):
    """Where the copy ran (dropped and stopped at the end)."""

    database: str = Field(description="The scratch database's name.")
    base_url: str = Field(description="The copy's Letta server, on a loopback port.")


class TargetHealth(ReportPart):
    version: str
    status: str


class RehearsalReport(FlowReport):
    """``rehearse()``'s result and ``letta-ops upgrade --rehearse --json``."""

    # ``copy`` is BaseModel's: the field is ``copy_``, ``copy`` in the JSON.
    model_config = ConfigDict(
        validate_assignment=True, serialize_by_alias=True, validate_by_name=True
    )

    plan: UpgradePlan = Field(description="The upgrade's plan against the real server.")
    source_set: str = Field(description="The set the copy was restored from.")
    outcome: str = Field(description="running, succeeded or failed.")
    copy_: RehearsalCopy | None = Field(None, alias="copy")
    counts_before: dict[str, int] | None = Field(None, description="Rows per table, before.")
    counts_after: dict[str, int] | None = Field(None, description="Rows per table, after.")
    verification: list[AgentVerification] | None = Field(None, description="Per agent.")
    not_carried: NotCarried | None = Field(None, description="Rebuild only.")
    target_health: TargetHealth | None = None
    error: str | None = Field(None, description="The cause of a failure, with its step.")
    log_tail: str | None = Field(None, description="The copy's last log lines on a failure.")
    steps: list[TimedStep] = Field(default_factory=list, description="Every step, timed.")
    downtime_steps: list[TimedStep] = Field(
        default_factory=list, description="The steps a real upgrade's server is down for."
    )
    downtime_seconds: float | None = Field(None, description="Measured: stop -> verified.")
    warnings: list[str] = Field(
        default_factory=list, description="Errors, warnings, deprecations the target logged."
    )
    finished_at: datetime | None = None


def downtime_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The timed steps a real upgrade's server would be down for (stop .. import)."""
    down, started = [], False
    for row in steps:
        started = started or row["step"] == "stop server"
        if row["step"] == "verify":
            break
        if started:
            down.append(row)
    return down


def notable_lines(text: str, limit: int = 20) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if NOTABLE.search(line)]
    return lines[-limit:]


class RunLogLines(logging.Handler):
    """The run's own log lines while the chain runs on the copy: the target's alembic
    warnings arrive there (``migrate_database`` logs them), not in the server's log."""

    LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> RunLogLines:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


@task(name="restore-copy", cache_policy=NO_CACHE)
def restore_copy(scratch, store, manifest) -> dict[str, Any]:
    return restore_database_from_set(scratch, store, manifest)


@task(name="start-copy", cache_policy=NO_CACHE)
def start_copy(runtime: LettaProcessRuntime, scratch, version: str, timeout: float) -> dict:
    return start_set_version(runtime, scratch, version, timeout, log=get_run_logger().info)


def copy_profile(profile: ServerProfile, scratch, workdir: Path) -> ServerProfile:
    """The copy as a server of its own: a process on a free loopback port, its own state."""
    runtime = LettaProcessRuntime.scratch_of(
        profile.runtime, f"{profile.name}-rehearsal", free_loopback_port(), workdir / "server"
    )
    server = LettaServer(
        name=f"{profile.name}-rehearsal",
        base_url=runtime.base_url,
        password=profile.server.password,
    )
    return ServerProfile(server, scratch, runtime)


def render_rehearsal_markdown(report: RehearsalReport) -> str:
    plan = report.plan
    lines = [
        f"# Rehearsal of {plan.server}: {plan.from_version} -> {plan.to_version} "
        f"({plan.strategy}) on a copy of {report.source_set}: **{report.outcome}**",
        "",
        f"- measured downtime: {report.downtime_seconds} s",
    ]
    lines += [f"  - {s.step}: {s.seconds} s" for s in report.downtime_steps]
    if report.error:
        lines.append(f"- cause: {report.error}")
    if report.not_carried:
        nc = report.not_carried
        lines.append(
            f"- agent files would not carry {nc.messages} messages and "
            f"{nc.archival_passages} archival passages"
        )
    for agent_id, change in plan.renames.items():
        lines.append(f"- would rename `{agent_id}`: {change.old!r} -> {change.new!r}")
    lines += [f"- log: {line}" for line in report.warnings]
    return "\n".join(lines)


@flow(
    name="letta-rehearse",
    timeout_seconds=run_timeouts.REHEARSE,
    flow_run_name=run_name("rehearse", "to_version"),
)
def rehearse(
    to_version: str,
    server: str | None = None,
    store: str | None = None,
    strategy: str = "migrate",
    from_set: str | None = None,
    start_timeout_seconds: float = 240,
) -> RehearsalReport:
    """Run the upgrade to ``to_version`` by ``strategy`` on a copy of the server's data."""
    with audited_run("rehearse", server, {"to": to_version, "strategy": strategy}) as audit:
        logger = get_run_logger()
        profile = load_profile(server, need_database=True)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "rehearse")
        require_rehearsable(profile, "postgresql", "")
        plan = preflight(profile, to_version, strategy)  # read-only: versions, names, room
        object_store = open_backup_store(store, server)
        if from_set is None:
            taken = backup(server=server, store=store, allow_partial_agents=True, purpose="manual")
            from_set = taken.set
        server_name, set_id = resolve_set(object_store, from_set, profile.name)
        manifest = load_manifest(object_store, server_name, set_id)
        require_rehearsable(profile, manifest.engine, f"{manifest.server}/{manifest.set_id}")
        require_dump(manifest)
        require_intact(object_store, manifest)
        source = f"{manifest.server}/{manifest.set_id}"
        audit.update(
            versions_from=plan.from_version,
            versions_to=plan.to_version,
            backup_set=source,
            strategy=strategy,
            store=object_store,
        )
        if manifest.letta_version != plan.from_version:
            raise RehearsalFailed(
                f"Set {source} holds Letta {manifest.letta_version}, but the server runs "
                f"{plan.from_version}; rehearse from a set of the running version."
            )
        target, dedicated = drill_target(server, None)
        if dedicated:
            refuse_live_drill_target(target, server)
        report = RehearsalReport(plan=plan, source_set=source, outcome="running")
        with (
            scratch_database(target, manifest.db_schema, dedicated, "rehearsal", manifest) as (
                scratch,
                _in_place,
            ),
            tempfile.TemporaryDirectory(prefix="letta-ops-rehearsal-") as workdir,
        ):
            # The copy is the role's own: emptied in place, whatever production's mode.
            scratch = scratch.model_copy(update={"reset_mode": "in-place"})
            copy = copy_profile(profile, scratch, Path(workdir))
            report.copy_ = RehearsalCopy(
                database=scratch.database_name, base_url=copy.server.base_url
            )
            try:
                restore_copy(scratch, object_store, manifest)
                start_copy(copy.runtime, scratch, plan.from_version, start_timeout_seconds)
                report.counts_before = table_row_counts(scratch)
                state = UpgradeState(
                    profile=copy,
                    store=object_store,
                    manifest=manifest,
                    old_version=plan.from_version,
                    before_agents=agent_inventory(scratch),
                    renames=plan.rename_map() if strategy == "rebuild" else {},
                    final_renames=plan.final_map() if strategy == "rebuild" else None,
                )
                runner = run_migrate if strategy == "migrate" else run_rebuild
                result: dict[str, Any] = {}
                run_log = RunLogLines()
                try:
                    with run_log, undoable(state, lambda: undo_upgrade(state)):
                        result = runner(state, plan.to_version, start_timeout_seconds)
                    counts_after = table_row_counts(scratch)
                    report.outcome = "succeeded"
                    report.verification = result["verification"]
                    report.not_carried = result.get("not_carried")
                    report.counts_after = counts_after
                    report.target_health = TargetHealth(version=plan.to_version, status="ok")
                except Exception as exc:
                    report.outcome = "failed"
                    report.error = f"at step {state.step}: {database_error_message(exc)}"
                    report.log_tail = _log_tail(copy)
                steps = state.step_seconds()
                down = downtime_steps(steps)
                report.steps = steps
                report.downtime_steps = down
                # The real upgrade's own measure when the chain ran through (stop to
                # verified), so plans compare like with like; else the steps' sum.
                report.downtime_seconds = (
                    result["downtime_seconds"]
                    if report.outcome == "succeeded"
                    else round(sum(s["seconds"] for s in down), 1)
                )
                report.warnings = notable_lines("\n".join(run_log.lines)) + notable_lines(
                    _log_text(copy)
                )
            finally:
                copy.runtime.stop()
        report.finished_at = datetime.now(UTC)
        audit.update(
            outcome=report.outcome,
            downtime_seconds=report.downtime_seconds,
            downtime_steps=report.downtime_steps,
            counts_before=report.counts_before,
            counts_after=report.counts_after,
        )
        publish_report(profile.name, "rehearse", render_rehearsal_markdown(report))
        if report.outcome != "succeeded":
            raise RehearsalFailed(
                f"Rehearsal of {profile.name} {plan.from_version} -> {plan.to_version} "
                f"({strategy}) failed on a copy of {source} {report.error}; the server was "
                f"not touched. Last log lines: {report.log_tail or '(none)'}"
            )
        logger.info(
            "rehearsal: %s -> %s (%s) succeeded on a copy; measured downtime %s s",
            plan.from_version,
            plan.to_version,
            strategy,
            report.downtime_seconds,
        )
        return report


def _log_text(copy: ServerProfile) -> str:
    from ..tasks.runtimes.process import log_file

    path = log_file(copy.runtime.resolved_state_dir())
    return path.read_text(errors="replace") if path.exists() else ""


def _log_tail(copy: ServerProfile, lines: int = 8) -> str:
    return " | ".join(_log_text(copy).strip().splitlines()[-lines:])
