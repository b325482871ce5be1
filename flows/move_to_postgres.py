"""Move a Letta server from its SQLite file to an empty PostgreSQL database, losslessly, at the
same Letta version.

The runbook this replaces (an operator on pip's default SQLite who must upgrade past 0.11.x:
0.12+ no longer serve SQLite), as one run:

1. plan: the SQLite tables, rows and bytes, the expected time; the target proven empty, with
   pgvector; ``--dry-run`` stops here;
2. stop the server; checksum the SQLite file;
3. the same version's alembic builds the schema in PostgreSQL;
4. every row copied, parents first, in one transaction (binary COPY, bounded batches), the
   counts of every table and each agent's messages and blocks compared on both sides, the
   sequences set past their maximum;
5. the SQLite file proven unchanged, the server started on PostgreSQL.

Any failure after the stop empties the target again and starts the server on its SQLite file,
as it was. The report and the audit record the plan, the counts and the phases.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger

from ..blocks.letta_database import LettaDatabase
from ..blocks.server_profile import ServerProfile, load_profile
from ..tasks.errors import Refused
from ..tasks.letta.api import LettaClient
from ..tasks.move.move_plan import MovePlan
from ..tasks.move.row_copy import DEFAULT_BATCH_ROWS, CopyResult
from ..tasks.move.sqlite_source import file_checksum
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.lock import destructive_lock
from ..tasks.runs.phase_timings import PhaseClock
from ..tasks.sqlite.database import SqliteDatabase
from .reports.move import MoveAgent, MoveReport, MoveTable, render_move_markdown
from .steps.move_steps import (
    build_schema,
    copy_rows,
    empty_target_again,
    plan_move,
    require_unchanged,
)
from .steps.server_steps import stop_server_step

#: The variable naming the PostgreSQL database to move into (never an argument: it holds the
#: password).
TARGET_VARIABLE = "LETTA_OPS_MOVE_TO_URI"
LOCK_WAIT_SECONDS = 10.0


def resolve_target(target_database: str | None) -> LettaDatabase:
    """The saved Letta Database block of that name, else ``LETTA_OPS_MOVE_TO_URI``."""
    if target_database:
        return LettaDatabase.load(target_database)
    uri = os.environ.get(TARGET_VARIABLE, "").strip()
    if not uri:
        raise Refused(
            f"Name the PostgreSQL database to move into: --to-database BLOCK (a saved Letta "
            f"Database block) or {TARGET_VARIABLE}=postgresql://USER:PASSWORD@HOST:PORT/DB."
        )
    return LettaDatabase.from_env({"LETTA_PG_URI": uri})


def _sqlite_of(profile: ServerProfile, sqlite_file: str | None) -> SqliteDatabase:
    if sqlite_file:
        return SqliteDatabase.from_reference(sqlite_file)
    if profile.sqlite is None:
        raise Refused(
            f"Name the SQLite database of {profile.name} to move: --sqlite PATH or "
            "LETTA_OPS_SQLITE_DB=/home/USER/.letta/sqlite.db."
        )
    return profile.sqlite


def _report(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    plan: MovePlan,
    dry_run: bool,
    clock: PhaseClock,
    copied: CopyResult | None = None,
    **extra,
) -> MoveReport:
    seconds = copied.seconds_by_table if copied else {}
    agents = []
    if copied:
        for agent_id in sorted(copied.sqlite_agents.keys() | copied.postgres_agents.keys()):
            s = copied.sqlite_agents.get(agent_id, {})
            p = copied.postgres_agents.get(agent_id, {})
            agents.append(
                MoveAgent(
                    agent_id=agent_id,
                    sqlite_messages=s.get("messages", 0),
                    postgres_messages=p.get("messages", 0),
                    sqlite_blocks=s.get("blocks", 0),
                    postgres_blocks=p.get("blocks", 0),
                )
            )
    return MoveReport(
        server=profile.name,
        version=version,
        sqlite_file=str(sqlite.path),
        target=target.redacted_uri(),
        dry_run=dry_run,
        tables=[
            MoveTable(
                name=t.name,
                action=t.action,
                reason=t.reason,
                rows=t.rows,
                bytes=t.bytes,
                sqlite_count=copied.sqlite_counts.get(t.name) if copied else None,
                postgres_count=copied.postgres_counts.get(t.name) if copied else None,
                seconds=seconds.get(t.name),
            )
            for t in plan.tables
        ],
        rows=plan.rows,
        bytes=plan.bytes,
        expected_seconds=plan.expected_seconds,
        copy_order=copied.order if copied else [],
        deferred_keys=copied.deferred_keys if copied else [],
        agents=agents,
        phases=clock.timings(),
        now_on="sqlite" if dry_run else "postgresql",
        **extra,
    )


def _publish(report: MoveReport) -> None:
    publish_report(
        report.server,
        "move-to-postgres",
        render_move_markdown(report),
        [
            {"table": t.name, "action": t.action, "rows": t.rows, "bytes": t.bytes}
            for t in report.tables
        ],
    )


@flow(
    name="letta-move-to-postgres",
    timeout_seconds=run_timeouts.MOVE,
    flow_run_name=run_name("move-to-postgres"),
)
def move_to_postgres(
    sqlite_file: str | None = None,
    server: str | None = None,
    target_database: str | None = None,
    dry_run: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    lock_timeout_seconds: float = LOCK_WAIT_SECONDS,
) -> MoveReport:
    """Move the server's SQLite file (``sqlite_file``, else the profile's
    ``LETTA_OPS_SQLITE_DB``) into the empty PostgreSQL database ``target_database`` (a saved
    block; else ``LETTA_OPS_MOVE_TO_URI``) and restart it there, at its version."""
    with audited_run("move-to-postgres", server) as audit:
        logger = get_run_logger()
        clock = PhaseClock()
        profile = load_profile(server)
        sqlite = _sqlite_of(profile, sqlite_file)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "move-to-postgres")
        target = resolve_target(target_database)
        with clock.phase("plan"):
            with LettaClient(profile.server) as client:
                version = str(client.health()["version"])
            plan = plan_move(sqlite.path, target, profile.runtime)
        logger.info(
            "plan: %d tables, %d rows, %d bytes, about %.0f s",
            len(plan.copied()),
            plan.rows,
            plan.bytes,
            plan.expected_seconds,
        )
        if dry_run:
            report = _report(profile, version, sqlite, target, plan, True, clock)
            _publish(report)
            audit.update(dry_run=True, rows=plan.rows, bytes=plan.bytes)
            return report
        with destructive_lock(profile.name, lock_timeout_seconds):
            with clock.phase("stop"):
                stop_server_step(profile)
            before = file_checksum(sqlite.path)
            try:
                with clock.phase("schema"):
                    build_schema(profile.runtime, version, target)
                with clock.phase("copy+counts"):
                    copied, moved = copy_rows(sqlite.path, target, plan, batch_rows)
                after = require_unchanged(sqlite.path, before)
                with clock.phase("start on postgresql"):
                    profile.runtime.start(version, target, log=logger.info)
            except BaseException:
                logger.error("the move failed: emptying the target, starting on SQLite again")
                _put_back(profile, version, sqlite, target, before)
                raise
        report = _report(
            profile,
            version,
            sqlite,
            target,
            plan,
            False,
            clock,
            copied,
            sequences_moved=moved,
            sqlite_sha256_before=before,
            sqlite_sha256_after=after,
        )
        _publish(report)
        audit.update(
            dry_run=False, rows=plan.rows, bytes=plan.bytes, now_on="postgresql", to=report.target
        )
        logger.info(
            "moved %d rows; now on PostgreSQL: set LETTA_PG_URI (or the profile's database "
            "block) to the target for this server's next runs",
            plan.rows,
        )
        return report


def _put_back(
    profile: ServerProfile,
    version: str,
    sqlite: SqliteDatabase,
    target: LettaDatabase,
    before: str,
) -> None:
    """Undo: stop a server that may have started on PostgreSQL, empty the target, start the
    server on its SQLite file (proven unchanged)."""
    logger = get_run_logger()
    profile.runtime.stop(log=logger.info)
    try:
        empty_target_again(target)
    except Exception as exc:  # the server goes back on SQLite all the same
        logger.error("the target could not be emptied again (%s); drop that database", exc)
    require_unchanged(sqlite.path, before)
    profile.runtime.start(version, sqlite, log=logger.info)
