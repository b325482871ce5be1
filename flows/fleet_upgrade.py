"""A rolling upgrade of the fleet to one pinned version: a canary, a soak, then waves.

The runbook it replaces: "upgrade one server first and watch it; if it holds, do the rest a
few at a time; at the first sign of trouble stop and tell me who is on what". Each server is
upgraded by its own ``letta-upgrade`` run (verified backup first, its own verification, and a
rollback of itself when it fails). This flow only decides who goes when:

1. the canary (``canary`` or the first selected server) alone;
2. a soak: for ``soak_seconds`` its health must report the target; with ``smoke_check`` a
   scratch agent is created, exported and deleted on it;
3. waves of ``wave_size``, each after the operator's approval when ``approval_between_waves``;
4. on the first failure no new wave starts; the report says which server is on which version.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.fleet_inventory import selected_servers
from ..tasks.letta.versions import parse_server_version
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.child_runs import (
    ChildOutcome,
    FleetRunFailed,
    launch_deployment_run,
    outcome_from_run,
    run_locally,
    wait_for_runs,
)
from ..tasks.runs.context import publish_report, run_name
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.runs.server_selection import ServerEntry, plan_waves

#: The per-server deployment children are launched from (prefect.yaml).
CHILD_DEPLOYMENT = "letta-upgrade/upgrade"


def scratch_agent_round_trip(entry: ServerEntry) -> dict[str, Any]:
    """Create, export and delete a scratch agent: the server writes, reads and deletes."""
    from ..blocks.server_profile import load_profile
    from ..tasks.letta.api import LettaClient, offline_agent_body

    profile = load_profile(entry.name)
    started = time.monotonic()
    with LettaClient(profile.server) as client:
        agent = client.create_agent(offline_agent_body(f"letta-ops-smoke-{uuid.uuid4().hex[:8]}"))
        try:
            exported = client.export_agent(agent["id"])
        finally:
            client.delete_agent(agent["id"])
    return {"ok": bool(exported), "seconds": round(time.monotonic() - started, 1)}


@task(name="soak", cache_policy=NO_CACHE)
def soak(entries: list[ServerEntry], version: str, seconds: float, smoke: bool) -> dict[str, Any]:
    """Health at ``version`` on every upgraded server for ``seconds``, then the smoke check."""
    from ..tasks.letta.health import probe_health

    deadline = time.monotonic() + seconds
    while True:
        for entry in entries:
            health = probe_health(entry.base_url)
            if not health or health.get("version") != version:
                return {
                    "ok": False,
                    "error": f"{entry.name} stopped reporting Letta {version} healthy during "
                    f"the soak (answer: {health or 'none'})",
                }
        if time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))
    smoke_results = {}
    if smoke:
        for entry in entries:
            try:
                smoke_results[entry.name] = scratch_agent_round_trip(entry)
            except Exception as exc:  # noqa: BLE001 - a failed smoke check stops the rollout
                return {"ok": False, "error": f"smoke check on {entry.name} failed: {exc}"}
    return {"ok": True, "smoke": smoke_results, "soak_seconds": seconds}


def current_versions(entries: list[ServerEntry]) -> dict[str, str | None]:
    from ..tasks.letta.health import probe_health

    return {e.name: (probe_health(e.base_url) or {}).get("version") for e in entries}


def run_wave(
    wave: list[ServerEntry], deployment: str | None, parameters: dict[str, Any], timeout: float
) -> list[ChildOutcome]:
    names = [e.name for e in wave]
    if deployment:
        runs = {n: launch_deployment_run(deployment, n, parameters) for n in names}
        finished = wait_for_runs(runs, timeout)
        return [outcome_from_run(n, runs[n], finished.get(n)) for n in names]
    from .upgrade import upgrade

    return [run_locally(n, upgrade, parameters) for n in names]


class SmokeCheck(ReportPart):
    """A scratch agent created, exported and deleted on one server."""

    ok: bool = Field(description="The export returned the agent.")
    seconds: float = Field(description="How long the round trip took.")


class SoakResult(ReportPart):
    """The soak after the canary wave (``soak()``'s dict, validated)."""

    ok: bool = Field(description="Every upgraded server held the target and passed the smoke.")
    error: str | None = Field(default=None, description="Why the soak failed (None: it held).")
    smoke: dict[str, SmokeCheck] | None = Field(
        default=None, description="The smoke check by server ({}: not asked; None: not reached)."
    )
    soak_seconds: float | None = Field(
        default=None, description="How long health was watched (None: the soak failed)."
    )


class FleetUpgradeReport(FlowReport):
    """``fleet_upgrade()``'s result and ``letta-ops fleet-upgrade --json``."""

    to_version: str = Field(description="The version every server is upgraded to.")
    selector: str = Field(description="The --servers selector the servers were picked by.")
    waves: list[list[str]] = Field(description="Server names by wave; the first is the canary.")
    strategy: str = Field(description="Each server's upgrade strategy (migrate or rebuild).")
    outcome: str = Field(description="planned (dry run), succeeded or stopped.")
    versions: dict[str, str | None] = Field(
        description="Letta's version on each server by name (None: down)."
    )
    outcomes: dict[str, str] = Field(
        description="Each server's result by name (upgraded, failed ..., not started)."
    )
    approved_by: str | None = Field(
        default=None, description="Who approved the last wave (None: no approval asked)."
    )
    soak: SoakResult | None = Field(default=None, description="None: the soak was not reached.")
    stopped_because: str | None = Field(
        default=None, description="Why no further wave started (None: not stopped)."
    )


def render_fleet_upgrade_markdown(report: FleetUpgradeReport) -> str:
    lines = [
        f"# Fleet upgrade to {report.to_version}: **{report.outcome}**",
        "",
        "waves: " + " | ".join(", ".join(w) for w in report.waves),
    ]
    if report.stopped_because:
        lines.append(f"stopped: {report.stopped_because}")
    lines += ["", "| server | version now | outcome |", "|---|---|---|"]
    for name, version in report.versions.items():
        lines.append(f"| {name} | {version or 'down'} | {report.outcomes.get(name, '')} |")
    return "\n".join(lines)


@flow(name="letta-fleet-upgrade", flow_run_name=run_name("fleet-upgrade", "to_version"))
def fleet_upgrade(
    to_version: str,
    servers: str = "*",
    canary: str | None = None,
    wave_size: int = 2,
    strategy: str = "migrate",
    soak_seconds: float = 120,
    smoke_check: bool = True,
    approval_between_waves: bool = False,
    deployment: str | None = CHILD_DEPLOYMENT,
    store: str | None = None,
    dry_run: bool = False,
    timeout_seconds: float = 3 * 3600,
    upgrade_parameters: dict[str, Any] | None = None,
) -> FleetUpgradeReport:
    """Upgrade the servers ``servers`` selects to ``to_version``: canary, soak, waves.

    ``deployment`` is the per-server upgrade deployment the children run as (on its work
    pool's workers); None upgrades them here, one after another. ``upgrade_parameters`` go to
    every server's upgrade run as well (e.g. ``start_timeout_seconds``, ``reset``).
    """
    version = str(parse_server_version(to_version))
    with audited_run("fleet-upgrade", "fleet", {"servers": servers, "to": version}) as audit:
        logger = get_run_logger()
        entries = {e.name: e for e in selected_servers(servers)}
        waves = plan_waves(list(entries), wave_size, canary)
        report = FleetUpgradeReport(
            to_version=version,
            selector=servers,
            waves=waves,
            strategy=strategy,
            outcome="planned",
            versions=current_versions(list(entries.values())),
            outcomes={},
        )
        if dry_run:
            audit.update(outcome="planned")
            return report
        parameters = {
            # The canary is the fleet's rehearsal; each child need not have its own.
            "require_rehearsal": False,
            **(upgrade_parameters or {}),
            "to_version": version,
            "store": store,
            "strategy": strategy,
            "approval": False,
        }
        for index, wave in enumerate(waves):
            if index > 0 and approval_between_waves:
                from ..tasks.runs.approval import await_operator_approval

                report.approved_by = await_operator_approval(
                    f"fleet upgrade wave {index + 1} ({', '.join(wave)})", "fleet"
                )
            logger.info("wave %d of %d: %s", index + 1, len(waves), ", ".join(wave))
            outcomes = run_wave([entries[n] for n in wave], deployment, parameters, timeout_seconds)
            for outcome in outcomes:
                report.outcomes[outcome.server] = (
                    "upgraded"
                    if outcome.ok
                    else f"failed (rolled back by its run): {outcome.error}"
                )
            failed = [o for o in outcomes if not o.ok]
            if failed:
                report.stopped_because = f"{failed[0].server} failed: {failed[0].error}"
                break
            if index == 0:
                soaked = SoakResult.model_validate(
                    soak([entries[n] for n in wave], version, soak_seconds, smoke_check)
                )
                report.soak = soaked
                if not soaked.ok:
                    report.stopped_because = soaked.error
                    break
        for name in entries:
            report.outcomes.setdefault(name, "not started")
        report.versions = current_versions(list(entries.values()))
        report.outcome = "stopped" if report.stopped_because else "succeeded"
        publish_report("fleet", "fleet-upgrade", render_fleet_upgrade_markdown(report))
        audit.update(versions_to=version, stopped_because=report.stopped_because)
        if report.stopped_because:
            raise FleetRunFailed(
                f"Fleet upgrade to {version} stopped: {report.stopped_because}; "
                + ", ".join(f"{n} on {v or 'down'}" for n, v in report.versions.items())
            )
        return report
