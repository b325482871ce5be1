"""``make demo``: the main job on embedded defaults, end to end.

Back up a pinned old Letta (0.11.7) with sample agents into a local S3 endpoint, upgrade it
to 0.16.2 (migrate strategy, automatic rollback armed), drill-restore the pre-upgrade set,
and print the report with links into the Prefect UI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydantic import Field

from ..flows.backup import BackupReport
from ..flows.reports.upgrade import UpgradeReport
from ..flows.verify import VerifyReport
from ..tasks.letta.api import LettaClient
from ..tasks.runs.report import FlowReport, ReportPart
from .demo_environment import (
    DEMO_NEW_VERSION,
    DEMO_OLD_VERSION,
    demo_environment,
    seed_sample_agents,
    start_prefect_ui,
)


class DemoFlowRuns(ReportPart):
    """The flow run id of each step of the demo (links into the Prefect UI)."""

    backup: str
    upgrade: str
    drill: str


class DemoReport(FlowReport):
    """``run_demo()``'s result and ``letta-ops demo --json``."""

    ok: bool = Field(
        description="The upgrade succeeded, the drill passed and the server reports the new "
        "version."
    )
    backup: BackupReport = Field(description="The backup of the old version.")
    upgrade: UpgradeReport = Field(description="The upgrade to the new version.")
    drill: VerifyReport = Field(description="The restore drill of the pre-upgrade set.")
    flow_runs: DemoFlowRuns
    prefect_ui: str = Field(description="The Prefect UI's URL (empty: none).")
    text: str = Field(description="The demo's report as printed.")


def _run(flow_fn, **params) -> tuple[Any, str]:
    state = flow_fn(return_state=True, **params)
    return state.result(), str(state.state_details.flow_run_id)


def run_demo(log: Callable[[str], None] = print, ui: bool = True) -> DemoReport:
    """Run the demo on the demo's own Prefect UI server (``ui``) or a temporary one."""
    if not ui:
        return _run_demo(log)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from .demo_environment import stop_prefect_ui

    url, started_here = start_prefect_ui(log)
    try:
        # Prefect reads its settings once at import: point this process at the UI server
        # through its settings context, not through os.environ.
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
            return _run_demo(log)
    except BaseException:
        if started_here:  # a failed demo leaves nothing running that it started
            log("stopping the Prefect server this demo started")
            stop_prefect_ui()
        raise


def _run_demo(log: Callable[[str], None]) -> DemoReport:
    from prefect.settings import PREFECT_API_URL

    from ..flows.backup import backup
    from ..flows.upgrade import upgrade
    from ..flows.verify import verify

    ui_url = (PREFECT_API_URL.value() or "").removesuffix("/api")
    with demo_environment(DEMO_OLD_VERSION, log=log) as env:
        with LettaClient(env.server) as client:
            agents = seed_sample_agents(client)
        from ..tasks.store.s3 import s3_client_from_env

        s3_client_from_env().create_bucket(Bucket=env.bucket)
        os.environ.update(
            {
                "LETTA_BASE_URL": env.server.base_url,
                "LETTA_PG_URI": env.database.letta_pg_uri(),
                "LETTA_OPS_SERVER_NAME": "demo",
                "LETTA_OPS_STATE_DIR": str(env.runtime.state_dir.parent),
                "LETTA_OPS_STORE": f"s3://{env.bucket}/letta",
            }
        )
        log(f"backing up {len(agents)} agents of Letta {DEMO_OLD_VERSION}")
        backup_report, backup_run = _run(backup, allow_partial_agents=True, purpose="manual")
        log(f"upgrading to Letta {DEMO_NEW_VERSION} (migrate strategy)")
        upgrade_report, upgrade_run = _run(upgrade, to_version=DEMO_NEW_VERSION)
        log("restore drill of the pre-upgrade backup set")
        drill_report, drill_run = _run(verify, backup_set=upgrade_report.backup_set, drill=True)
        with LettaClient(env.server) as client:
            health = client.health()
    runs = DemoFlowRuns(backup=backup_run, upgrade=upgrade_run, drill=drill_run)
    return DemoReport(
        ok=upgrade_report.outcome == "succeeded"
        and drill_report.ok
        and health["version"] == DEMO_NEW_VERSION,
        backup=backup_report,
        upgrade=upgrade_report,
        drill=drill_report,
        flow_runs=runs,
        prefect_ui=ui_url,
        text=render_demo(backup_report, upgrade_report, drill_report, health, runs, ui_url),
    )


def render_demo(
    backup_report: BackupReport,
    upgrade_report: UpgradeReport,
    drill: VerifyReport,
    health: dict,
    runs: DemoFlowRuns,
    ui_url: str,
) -> str:
    from .output import render_table

    rows = [row.model_dump(mode="json") for row in upgrade_report.verification or []]
    lines = [
        "",
        "letta-ops demo report",
        "=====================",
        f"backup   {backup_report.set}: {backup_report.agents_exported} of "
        f"{backup_report.agents_total} agent files, dump {backup_report.dump_bytes} "
        f"bytes, verified={backup_report.verified}",
    ]
    lines += [
        f"         not exportable by {backup_report.letta_version}: "
        f"{a.name!r} ({a.id}); the pg_dump holds it"
        for a in backup_report.agents_failed
    ]
    lines += [
        f"upgrade  {upgrade_report.plan.from_version} -> "
        f"{upgrade_report.plan.to_version} ({upgrade_report.plan.strategy}): "
        f"{upgrade_report.outcome}, downtime {upgrade_report.downtime_seconds} s, "
        f"pre-upgrade set {upgrade_report.backup_set}",
        f"server   now Letta {health['version']} ({health['status']})",
        f"drill    restored {drill.drill_result.tables} tables into a scratch database,"
        f" {len(drill.drill_result.differences)} count differences",
        "",
        "verification (per agent, before -> after):",
        render_table(
            rows,
            ["name_before", "messages_before", "messages_after", "blocks_before", "blocks_after"],
        ),
    ]
    if ui_url:
        lines += ["", f"Prefect UI: {ui_url}"]
        lines += [
            f"  {name:8} {ui_url}/runs/flow-run/{run_id}"
            for name, run_id in runs.model_dump().items()
        ]
        lines += [
            "  (artifacts: the run's Artifacts tab; stop the UI with 'letta-ops demo --stop-ui')"
        ]
    return "\n".join(lines)
