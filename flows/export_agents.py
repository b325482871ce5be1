"""Export every agent of a server into a folder: one agent file per agent, and a manifest.

The runbook this replaces: ``for id in $(curl .../v1/agents/ | jq ...); do curl
.../v1/agents/$id/export > agent-$id.json; done`` before an upgrade, names lost, failures
unnoticed. As one run:

1. refuse a folder that is not new or empty (an export never overwrites files);
2. list the agents (every page) and the server's version; with ``dry_run`` stop here;
3. export each agent to ``<id>.af``; an agent the server cannot export (``AI/ML Expert``
   answers 500) is recorded with the server's own error and the fix, the others go on;
4. write ``manifest.json`` last: names, the messages and blocks each file carries (and the
   server holds, when its database is known), sha256 of each file.

Agent files carry memory blocks and part of the message history, no archival passages; a
backup set's pg_dump holds everything. ``import-agents`` reads the folder back.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.server_profile import ServerProfile, load_profile
from ..tasks.letta.agent_folder import (
    manifest_entry,
    require_new_folder,
    write_agent_file,
    write_manifest,
)
from ..tasks.letta.agent_names import name_rule_for
from ..tasks.letta.api import LettaAPIError, LettaClient
from ..tasks.postgres.letta_inventory import agent_inventory
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart


class ExportedAgent(ReportPart):
    """One agent: its file and what the file carries, or why it has none."""

    agent_id: str
    name: str
    file: str | None = Field(description="Its file in the folder (None: not exported).")
    messages_in_file: int | None
    blocks_in_file: int | None
    messages_on_server: int | None = Field(description="By SQL (None: no database known).")
    blocks_on_server: int | None = Field(description="By SQL (None: no database known).")
    error: str | None = Field(description="The server's answer when the export failed.")


class AgentExportReport(FlowReport):
    """``export_agents()``'s result and ``letta-ops export-agents --json``."""

    server: str
    letta_version: str
    folder: str
    dry_run: bool
    agents: list[ExportedAgent]
    exported: int
    failed: int
    manifest: str | None = Field(description="The manifest written (None: dry run).")
    note: str = Field(description="What agent files do not carry.")


@task(name="list-agents-to-export", cache_policy=NO_CACHE)
def list_agents_task(profile: ServerProfile) -> tuple[str, list[dict]]:
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        return version, [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]


@task(name="export-agents-to-folder", cache_policy=NO_CACHE)
def export_task(profile: ServerProfile, agents: list[dict], folder: Path) -> list[dict]:
    """Each agent's file into ``folder``; a failed export is a row with the server's error."""
    counts = agent_inventory(profile.database) if profile.database is not None else {}
    rows = []
    with LettaClient(profile.server) as client:
        for agent in agents:
            on_server = counts.get(agent["id"], {})
            row = {
                "agent_id": agent["id"],
                "name": agent["name"],
                "file": None,
                "messages_in_file": None,
                "blocks_in_file": None,
                "messages_on_server": on_server.get("messages"),
                "blocks_on_server": on_server.get("blocks"),
                "error": None,
            }
            try:
                written = write_agent_file(folder, agent["id"], client.export_agent(agent["id"]))
            except LettaAPIError as exc:
                row["error"] = str(exc)
            else:
                row.update(
                    file=written.file,
                    messages_in_file=written.messages,
                    blocks_in_file=len(written.blocks),
                    manifest_entry=manifest_entry(written),
                )
            rows.append(row)
    return rows


def render_export_markdown(report: AgentExportReport) -> str:
    head = "plan (nothing written)" if report.dry_run else f"{report.exported} exported"
    lines = [f"# Export agents of {report.server} to {report.folder}: {head}", ""]
    for a in report.agents:
        lines.append(
            f"- {a.name!r} ({a.agent_id}): "
            + (
                f"FAILED: {a.error}"
                if a.error
                else f"{a.file}, {a.messages_in_file} messages, {a.blocks_in_file} blocks"
            )
        )
    lines.append(f"- {report.note}")
    return "\n".join(lines)


@flow(
    name="letta-export-agents",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("export-agents"),
)
def export_agents(
    folder: str, server: str | None = None, dry_run: bool = False
) -> AgentExportReport:
    """Export every agent of the server into ``folder`` (new or empty), manifest last."""
    target = Path(folder).expanduser()
    with audited_run("export-agents", server, {"folder": str(target), "dry_run": dry_run}) as audit:
        profile = load_profile(server)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "export-agents")
        try:
            require_new_folder(target)
        except ValueError:
            audit.update(outcome="refused")
            raise
        version, agents = list_agents_task(profile)
        audit.update(versions_from=version)
        note = (
            "agent files carry memory blocks and part of the message history, no archival "
            "passages, no runs or steps; a backup set's pg_dump holds everything"
        )
        if dry_run:
            rule = name_rule_for(version)
            rows = [
                {
                    "agent_id": a["id"],
                    "name": a["name"],
                    "file": None,
                    "messages_in_file": None,
                    "blocks_in_file": None,
                    "messages_on_server": None,
                    "blocks_on_server": None,
                    "error": None
                    if rule.accepts(a["name"])
                    else f"Letta {version} cannot export this name ('letta-ops rename-agents')",
                }
                for a in agents
            ]
            audit.update(outcome="planned")
        else:
            rows = export_task(profile, agents, target)
        failed = [r for r in rows if r["error"]]
        manifest = None
        if not dry_run:
            written = [r for r in rows if r["file"]]
            manifest = str(
                write_manifest(
                    target,
                    profile.name,
                    version,
                    [r["manifest_entry"] for r in written],
                    [{"id": r["agent_id"], "name": r["name"], "error": r["error"]} for r in failed],
                )
            )
        report = AgentExportReport(
            server=profile.name,
            letta_version=version,
            folder=str(target),
            dry_run=dry_run,
            agents=[{k: v for k, v in r.items() if k != "manifest_entry"} for r in rows],
            exported=0 if dry_run else len(rows) - len(failed),
            failed=len(failed),
            manifest=manifest,
            note=note,
        )
        if not dry_run:
            audit.update(outcome="succeeded" if not failed else f"{len(failed)} agent(s) failed")
        publish_report(profile.name, "export-agents", render_export_markdown(report))
        get_run_logger().info("exported %d agents to %s", report.exported, target)
        return report


__all__ = ["AgentExportReport", "ExportedAgent", "export_agents"]
