"""Repair the sequences behind Letta's columns, on its own (the upgrade runs the same code).

The runbook this replaces, as one run:

1. read every sequence column's health (``messages.sequence_id``'s default included);
2. in a real run, take the server's destructive lock (no upgrade or restore at the same time);
3. repair in one transaction: create ``message_seq_id`` if missing, set the default back,
   move every lagging sequence past its column's maximum; a dry run plans the same changes;
4. read the health again and publish what changed and what is now true.
"""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.letta_database import LettaDatabase
from ..blocks.server_profile import load_profile
from ..tasks.errors import Failed
from ..tasks.postgres.sequence_repair import (
    SequenceSource,
    repair_sequences_task,
    sequence_health,
)
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.lock import destructive_lock
from ..tasks.runs.report import FlowReport, ReportPart

#: How long a run waits for another destructive run on the server to finish.
LOCK_WAIT_SECONDS = 10.0


class SequencesStillBroken(Failed):
    """The repair ran, yet a sequence column is still unhealthy."""


@task(name="sequence-health", cache_policy=NO_CACHE)
def sequence_health_task(db: LettaDatabase) -> list[dict]:
    return sequence_health(db)


class CreateSequence(ReportPart):
    """``CREATE SEQUENCE``: messages.sequence_id's sequence was missing."""

    action: Literal["create-sequence"]
    sequence: str


class SetDefault(ReportPart):
    """A column's ``DEFAULT nextval(...)`` set back."""

    action: Literal["set-default"]
    table: str
    column: str
    sequence: str


class MoveSequence(ReportPart):
    """``setval``: a sequence moved past the highest value of the columns it feeds.

    ``from`` is a Python keyword: the field is ``from_``, ``from`` in the JSON."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    action: Literal["setval"]
    sequence: str
    table: str = Field(description="The column holding the highest value.")
    column: str
    from_: int = Field(alias="from", description="The value nextval handed out before.")
    to: int = Field(description="The value nextval hands out now.")


#: One change of a repair; its keys depend on its ``action``.
SequenceChange = Annotated[
    CreateSequence | SetDefault | MoveSequence, Field(discriminator="action")
]


class SequenceCheck(ReportPart):
    """One sequence column as the repair found it (before any change)."""

    table: str
    column: str
    sequence: str
    source: SequenceSource = Field(description="How the column gets its values.")
    max: int | None = Field(description="The column's highest value (None: no rows).")
    next_value: int = Field(description="What nextval would hand out.")
    ok: bool = Field(description="The sequence is past the column's maximum.")


class SequenceRepairReport(FlowReport):
    """``repair_sequences()``'s result and ``letta-ops repair-sequences --json``.

    ``schema`` is BaseModel's: the field is ``schema_``, ``schema`` in the JSON."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    server: str
    dry_run: bool = Field(description="True: the changes were planned, not made.")
    schema_: str = Field(alias="schema", description="The database schema repaired.")
    columns: int = Field(description="Sequence columns checked.")
    problems_before: list[str] = Field(description="What was wrong before, one per column.")
    changes: list[SequenceChange] = Field(description="What changed (in a dry run: would).")
    problems_after: list[str] = Field(description="What is still wrong afterwards.")
    checked: list[SequenceCheck]


def render_repair_markdown(server: str, report: SequenceRepairReport) -> str:
    verb = "would change" if report.dry_run else "changed"
    lines = [
        f"# Sequence repair on {server}{' (dry run)' if report.dry_run else ''}",
        "",
        f"- columns checked: {report.columns}",
        f"- problems before: {len(report.problems_before)}, after: {len(report.problems_after)}",
        f"- {verb}: {len(report.changes)}",
    ]
    lines += [f"  - {c.action}: {c.model_dump()}" for c in report.changes]
    lines += [f"- still wrong: {p}" for p in report.problems_after]
    return "\n".join(lines)


@flow(
    name="letta-repair-sequences",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("repair-sequences"),
)
def repair_sequences(
    server: str | None = None,
    dry_run: bool = False,
    lock_timeout_seconds: float = LOCK_WAIT_SECONDS,
) -> SequenceRepairReport:
    """Give ``messages.sequence_id`` its default back and move lagging sequences past their
    maximum. Idempotent: a second run changes nothing."""
    with audited_run("repair-sequences", server) as audit:
        logger = get_run_logger()
        profile = load_profile(server, need_database=True)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "repair-sequences")
        database = profile.require_database()
        before = sequence_health_task(database)
        if dry_run:
            repair = repair_sequences_task(database, dry_run=True)
            after = before
        else:
            with destructive_lock(profile.name, lock_timeout_seconds, database=profile.database):
                repair = repair_sequences_task(database, dry_run=False)
                after = sequence_health_task(database)
        report = SequenceRepairReport.model_validate(
            {
                "server": profile.name,
                "dry_run": dry_run,
                "schema": repair["schema"],
                "columns": len(before),
                "problems_before": [h["problem"] for h in before if not h["ok"]],
                "changes": repair["changes"],
                "problems_after": [h["problem"] for h in after if not h["ok"]],
                "checked": repair["checked"],
            }
        )
        publish_report(
            profile.name,
            "repair-sequences",
            render_repair_markdown(profile.name, report),
            [{k: str(v) for k, v in c.items()} for c in repair["changes"]] or None,
        )
        audit.update(dry_run=dry_run, changes=len(repair["changes"]))
        logger.info(
            "%s %d change(s); %d problem(s) left",
            "planned" if dry_run else "applied",
            len(repair["changes"]),
            len(report.problems_after),
        )
        if not dry_run and report.problems_after:
            raise SequencesStillBroken(
                f"After the repair {len(report.problems_after)} sequence problem(s) remain: "
                f"{report.problems_after[0]}"
            )
        return report
