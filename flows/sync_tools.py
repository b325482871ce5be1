"""Sync tools from a control agent to a fleet of agents.

The runbook this replaces, as one run:

1. list every agent; find the control agent (id or exact name) and the targets (tags, a
   name pattern, ids; each given criterion narrows the set, the control agent is never one);
2. read the control agent's tools and each target's tools, every page;
3. plan per agent: attach what is missing; in *exact* mode also detach what the control agent
   does not have;
4. unless this is a dry run, apply a few agents at a time (backing off only when the server
   asks) and re-read each agent, so the report states what is now true;
5. publish the report: attached / detached / unchanged / errors per agent.

Dry run by default for *exact* (it detaches); *additive* runs for real unless asked not to.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import Field

from ..blocks.server_profile import load_profile
from ..tasks.errors import Failed
from ..tasks.letta import tool_sync
from ..tasks.letta.tool_sync import (
    SyncMode,
    TargetSelectionError,
    TargetSelector,
    run_tool_sync_task,
)
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart


class ControlAgent(ReportPart):
    id: str
    name: str


class AgentToolSync(ReportPart):
    """What happened to one target agent (in a dry run: what would happen)."""

    agent_id: str
    agent_name: str
    attached: list[str] = Field(description="Names of the tools attached (or to attach).")
    detached: list[str] = Field(description="Names of the tools detached (or to detach).")
    unchanged: int = Field(description="Tools the agent already had as the control agent.")
    error: str | None = Field(description="Why the agent could not be synced (None: it was).")


class ToolSyncReport(FlowReport):
    """``sync_tools()``'s result and ``letta-ops sync-tools --json``."""

    control_agent: ControlAgent = Field(description="The agent whose tools the others get.")
    control_tools: list[str] = Field(description="Names of the control agent's tools.")
    mode: SyncMode = Field(description="additive attaches; exact also detaches.")
    dry_run: bool = Field(description="True: a plan, nothing was changed.")
    selector: str = Field(description="How the targets were chosen, in words.")
    targets: int = Field(description="Agents selected (never the control agent).")
    attached: int = Field(description="Tool attachments over every target.")
    detached: int = Field(description="Tool detachments over every target.")
    unchanged_agents: int = Field(description="Targets already in line (nothing to do).")
    errors: int = Field(description="Targets that ended with an error.")
    agents: list[AgentToolSync]


class ToolSyncFailed(Failed):
    """The sync ran, but some agents could not be brought in line; ``report`` says which."""

    def __init__(self, message: str, report: ToolSyncReport) -> None:
        super().__init__(message)
        self.report = report


def effective_dry_run(mode: SyncMode, dry_run: bool | None) -> bool:
    """``None`` means the safe default: plan only when the mode detaches."""
    return mode == "exact" if dry_run is None else dry_run


def render_sync_markdown(server: str, report: ToolSyncReport) -> str:
    head = "plan only (nothing changed)" if report.dry_run else "applied"
    lines = [
        f"# Tool sync on {server}: {report.mode}, {head}",
        "",
        f"- control agent: {report.control_agent.name!r} "
        f"(`{report.control_agent.id}`), {len(report.control_tools)} tools",
        f"- targets: {report.targets} ({report.selector})",
        f"- attached: **{report.attached}**, detached: **{report.detached}**, "
        f"agents already in line: {report.unchanged_agents}, errors: **{report.errors}**",
    ]
    failed = [a for a in report.agents if a.error]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- {a.agent_name!r} (`{a.agent_id}`): {a.error}" for a in failed]
    return "\n".join(lines)


@flow(
    name="letta-sync-tools",
    flow_run_name=run_name("sync-tools"),
    timeout_seconds=run_timeouts.MAINTENANCE,
)
def sync_tools(
    control_agent: str | None = None,
    tags: list[str] | None = None,
    name_pattern: str | None = None,
    agent_ids: list[str] | None = None,
    match_all_tags: bool = False,
    mode: SyncMode = "additive",
    dry_run: bool | None = None,
    concurrency: int = 4,
    server: str | None = None,
) -> ToolSyncReport:
    """Give the chosen agents the control agent's tools (``mode`` additive or exact).

    ``dry_run`` None: a dry run for exact mode, a real run for additive. Raises
    :class:`ToolSyncFailed` after publishing the report if any agent ended with an error.
    """
    with audited_run("sync-tools", server) as audit:
        logger = get_run_logger()
        profile = load_profile(server)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "sync-tools")
        if not control_agent:
            raise TargetSelectionError(
                "No control agent given; pass the id or name of the agent whose tools the "
                "others should get."
            )
        plan_only = effective_dry_run(mode, dry_run)
        selector = TargetSelector(
            tags=tuple(tags or ()),
            match_all_tags=match_all_tags,
            name_pattern=name_pattern,
            agent_ids=tuple(agent_ids or ()),
        )
        result: tool_sync.ToolSyncReport = run_tool_sync_task(
            profile.server, control_agent, selector, mode, plan_only, concurrency
        )
        report = ToolSyncReport.model_validate(result.to_dict())
        publish_report(
            profile.name,
            "sync-tools",
            render_sync_markdown(profile.name, report),
            [a.to_row() for a in result.agents if a.attached or a.detached or a.error],
        )
        audit.update(
            dry_run=plan_only,
            mode=mode,
            targets=report.targets,
            attached=report.attached,
            detached=report.detached,
            errors=report.errors,
        )
        logger.info(
            "%s: %d target(s), attached %d, detached %d, errors %d",
            "plan" if plan_only else "sync",
            report.targets,
            report.attached,
            report.detached,
            report.errors,
        )
        if result.errors:
            raise ToolSyncFailed(
                f"{result.errors} of {len(result.agents)} agent(s) could not be synced; see the "
                "report's errors (first: "
                + next(f"{a.agent_name!r}: {a.error}" for a in result.agents if a.error)
                + ").",
                report,
            )
        return report
