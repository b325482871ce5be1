"""Back up every selected server: one child run each, spread over the work pool's workers.

The runbook it replaces: "for each server, run the nightly backup; do not hammer one database
host or one bucket; if one fails, do the rest and tell me which". Each child is the ordinary
``letta-backup`` flow (its own verified set, audit record and lock), launched as a run of the
``backup`` deployment so a worker that can reach that server takes it. Global concurrency
limits bound how many children run at once per backup store and per database host; one
server's failure never stops the others. The parent publishes a table (server, set, agents,
bytes, duration, outcome, worker) and fails (exit 1) if any child failed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.fleet_inventory import selected_servers
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.child_runs import (
    ChildOutcome,
    FleetRunFailed,
    ensure_limits,
    launch_deployment_run,
    limit_name,
    outcome_from_run,
    run_locally,
    wait_for_runs,
)
from ..tasks.runs.context import publish_report, run_name
from ..tasks.runs.report import FlowReport

#: The per-server deployment children are launched from (prefect.yaml).
CHILD_DEPLOYMENT = "letta-backup/backup"


@task(name="fleet-limits", cache_policy=NO_CACHE)
def limits_for(
    names: list[str], store: str | None, per_store: int, per_host: int
) -> dict[str, list[str]]:
    """Each server's concurrency limits: its backup store and its database host."""
    from ..blocks.server_profile import load_profile, open_backup_store

    per_server: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for name in names:
        profile = load_profile(name or None, need_database=True)
        db = profile.require_database().parts
        store_limit = limit_name("store", open_backup_store(store, name or None).describe())
        host_limit = limit_name("dbhost", f"{db['host']}-{db['port']}")
        sizes[store_limit], sizes[host_limit] = per_store, per_host
        per_server[name] = [store_limit, host_limit]
    ensure_limits(sizes)
    return per_server


def set_size(outcome: ChildOutcome, store: str | None) -> tuple[int | None, int | None]:
    """Agents and bytes of the child's set, from its manifest."""
    if not outcome.backup_set or not outcome.ok:
        return None, None
    from ..blocks.server_profile import open_backup_store
    from ..tasks.sets.catalog import load_manifest

    manifest = load_manifest(
        open_backup_store(store, outcome.server), *outcome.backup_set.split("/")
    )
    return len(manifest.agents), sum(o.size for o in manifest.objects.values())


class FleetBackupServer(ChildOutcome):
    """One server's child backup run and the size of the set it wrote."""

    agents: int | None = Field(description="Agents in the child's set (None: no set).")
    bytes: int | None = Field(description="Bytes of the child's set (None: no set).")


class FleetBackupReport(FlowReport):
    """``fleet_backup()``'s result and ``letta-ops fleet-backup --json``."""

    selector: str = Field(description="The --servers selector the servers were picked by.")
    servers: list[FleetBackupServer] = Field(description="Each selected server's child run.")
    succeeded: int = Field(description="Child backups that completed.")
    failed: list[str] = Field(description="Servers whose child backup failed.")


def render_fleet_backup_markdown(report: FleetBackupReport) -> str:
    lines = [
        f"# Fleet backup of {report.selector!r}: {report.succeeded} of "
        f"{len(report.servers)} succeeded",
        "",
        "| server | set | agents | bytes | seconds | outcome | worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.servers:
        outcome = "ok" if row.ok else f"FAILED: {row.error}"
        lines.append(
            f"| {row.server} | {row.backup_set or ''} | {row.agents or ''} | "
            f"{row.bytes or ''} | {row.seconds or ''} | {outcome} | {row.worker or ''} |"
        )
    return "\n".join(lines)


@flow(
    name="letta-fleet-backup",
    timeout_seconds=run_timeouts.FLEET_BACKUP,
    flow_run_name=run_name("fleet-backup", "servers"),
)
def fleet_backup(
    servers: str = "*",
    store: str | None = None,
    deployment: str | None = CHILD_DEPLOYMENT,
    per_store_limit: int = 2,
    per_host_limit: int = 1,
    allow_partial_agents: bool = False,
    timeout_seconds: float = 6 * 3600,
    lock_days: float | None = None,
    lock_mode: str | None = None,
) -> FleetBackupReport:
    """Back up the saved servers ``servers`` selects (names, globs, ``key:value`` tags).

    ``lock_days`` / ``lock_mode`` are passed to every child backup (S3 Object Lock on each
    set; None: each child's own ``LETTA_OPS_LOCK_DAYS`` or store block decides).

    ``deployment`` (``FLOW/DEPLOYMENT``) is what each child runs as, on its work pool's
    workers; None runs the children here, one after another.
    """
    with audited_run("fleet-backup", "fleet", {"servers": servers}) as audit:
        logger = get_run_logger()
        names = [e.name for e in selected_servers(servers)]
        logger.info("fleet backup of %d server(s): %s", len(names), ", ".join(names))
        limits = limits_for(names, store, per_store_limit, per_host_limit)
        parameters = {
            "store": store,
            "allow_partial_agents": allow_partial_agents,
            "purpose": "scheduled",
        }
        if lock_days is not None:
            parameters["lock_days"] = lock_days
        if lock_mode is not None:
            parameters["lock_mode"] = lock_mode
        if deployment:
            runs = {
                n: launch_deployment_run(
                    deployment, n, {**parameters, "concurrency_limits": limits[n]}
                )
                for n in names
            }
            finished = wait_for_runs(runs, timeout_seconds)
            outcomes = [outcome_from_run(n, runs[n], finished.get(n)) for n in names]
        else:
            from .backup import backup

            outcomes = [run_locally(n, backup, parameters) for n in names]
        rows = []
        for outcome in outcomes:
            agents, size = set_size(outcome, store)
            rows.append(FleetBackupServer(**outcome.model_dump(), agents=agents, bytes=size))
        failed = [r for r in rows if not r.ok]
        report = FleetBackupReport(
            selector=servers,
            servers=rows,
            succeeded=len(rows) - len(failed),
            failed=[r.server for r in failed],
        )
        publish_report(
            "fleet",
            "fleet-backup",
            render_fleet_backup_markdown(report),
            [r.model_dump(mode="json") for r in rows],
        )
        audit.update(details_servers=names, failed=report.failed)
        if failed:
            raise FleetRunFailed(
                f"{len(failed)} of {len(rows)} server backups failed: "
                + "; ".join(f"{r.server}: {r.error}" for r in failed)
            )
        return report
