"""Repair the sequences behind Letta's columns, on its own (the upgrade runs the same code).

The runbook this replaces, as one run:

1. read every sequence column's health (``messages.sequence_id``'s default included);
2. in a real run, take the server's destructive lock (no upgrade or restore at the same time);
3. repair in one transaction: create ``message_seq_id`` if missing, set the default back,
   move every lagging sequence past its column's maximum; a dry run plans the same changes;
4. read the health again and publish what changed and what is now true.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.blocks.server_profile import load_profile
from letta_ops.flows.audit_record import audited_run
from letta_ops.flows.run_context import publish_report, run_name, tag_current_run
from letta_ops.flows.server_lock import destructive_lock
from letta_ops.tasks.errors import Failed
from letta_ops.tasks.sequence_repair import repair_sequences_task, sequence_health

#: How long a run waits for another destructive run on the server to finish.
LOCK_WAIT_SECONDS = 10.0


class SequencesStillBroken(Failed):
    """The repair ran, yet a sequence column is still unhealthy."""


@task(name="sequence-health", cache_policy=NO_CACHE)
def sequence_health_task(db: LettaDatabase) -> list[dict]:
    return sequence_health(db)


def render_repair_markdown(server: str, report: dict[str, Any]) -> str:
    verb = "would change" if report["dry_run"] else "changed"
    lines = [
        f"# Sequence repair on {server}{' (dry run)' if report['dry_run'] else ''}",
        "",
        f"- columns checked: {report['columns']}",
        f"- problems before: {len(report['problems_before'])}, after: "
        f"{len(report['problems_after'])}",
        f"- {verb}: {len(report['changes'])}",
    ]
    lines += [f"  - {c['action']}: {c}" for c in report["changes"]]
    lines += [f"- still wrong: {p}" for p in report["problems_after"]]
    return "\n".join(lines)


@flow(name="letta-repair-sequences", flow_run_name=run_name("repair-sequences"))
def repair_sequences(
    server: str | None = None,
    dry_run: bool = False,
    lock_timeout_seconds: float = LOCK_WAIT_SECONDS,
) -> dict[str, Any]:
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
            with destructive_lock(profile.name, lock_timeout_seconds):
                repair = repair_sequences_task(database, dry_run=False)
                after = sequence_health_task(database)
        report = {
            "server": profile.name,
            "dry_run": dry_run,
            "schema": repair["schema"],
            "columns": len(before),
            "problems_before": [h["problem"] for h in before if not h["ok"]],
            "changes": repair["changes"],
            "problems_after": [h["problem"] for h in after if not h["ok"]],
            "checked": repair["checked"],
        }
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
            len(report["problems_after"]),
        )
        if not dry_run and report["problems_after"]:
            raise SequencesStillBroken(
                f"After the repair {len(report['problems_after'])} sequence problem(s) remain: "
                f"{report['problems_after'][0]}"
            )
        return report
