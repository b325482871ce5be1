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

from prefect import flow, get_run_logger

from ..blocks.server_profile import ServerProfile, load_profile
from ..tasks.errors import Refused
from ..tasks.letta.api import LettaClient
from ..tasks.move.row_copy import DEFAULT_BATCH_ROWS
from ..tasks.move.sqlite_source import file_checksum
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.phase_timings import PhaseClock
from ..tasks.sqlite.database import SqliteDatabase
from .reports.move import MoveReport, render_move_markdown
from .steps.destructive_run import destructive_section
from .steps.move_steps import (
    COPY_STEP,
    build_schema,
    copy_rows,
    move_report,
    plan_move,
    put_back_on_sqlite,
    require_unchanged,
    resolve_target,
    schema_step,
)
from .steps.server_steps import stop_server_step

LOCK_WAIT_SECONDS = 10.0


def _sqlite_of(profile: ServerProfile, sqlite_file: str | None) -> SqliteDatabase:
    if sqlite_file:
        return SqliteDatabase.from_reference(sqlite_file)
    if profile.sqlite is None:
        raise Refused(
            f"Name the SQLite database of {profile.name} to move: --sqlite PATH or "
            "LETTA_OPS_SQLITE_DB=/home/USER/.letta/sqlite.db."
        )
    return profile.sqlite


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
            report = move_report(profile, version, sqlite, target, plan, True, clock)
            _publish(report)
            audit.update(dry_run=True, rows=plan.rows, bytes=plan.bytes)
            return report
        with destructive_section(
            "move-to-postgres",
            profile.name,
            audit,
            lock_timeout_seconds=lock_timeout_seconds,
            phase=clock.phase,
        ):
            journal = audit.journal()
            journal.begin(
                from_version=version,
                moved_to=target.redacted_uri(),
                target_database=target_database,
                sqlite_file=str(sqlite.path),
            )
            with clock.phase("stop"):
                journal.enter("stop server")
                try:
                    stop_server_step(profile)
                except BaseException:
                    journal.finish("failed at the stop: nothing of the move happened")
                    raise
            before = file_checksum(sqlite.path)
            try:
                with clock.phase("schema"):
                    journal.enter(schema_step(version), sqlite_sha256=before)
                    build_schema(profile.runtime, version, target)
                with clock.phase("copy+counts"):
                    journal.enter(COPY_STEP)
                    copied, moved = copy_rows(sqlite.path, target, plan, batch_rows)
                after = require_unchanged(sqlite.path, before)
                with clock.phase("start on postgresql"):
                    journal.enter("start on PostgreSQL")
                    profile.runtime.start(version, target, log=logger.info)
            except BaseException:
                logger.error("the move failed: emptying the target, starting on SQLite again")
                journal.enter("undo: back on SQLite")
                if put_back_on_sqlite(profile, version, sqlite, target, before):
                    journal.finish("failed, back on SQLite")  # an undo that failed: left open
                raise
            journal.finish("succeeded")
        report = move_report(
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
