"""Rename the agents the running Letta version refuses to export, so every agent has a file.

Why: Letta validates names only on create; ``PATCH`` accepts anything, so real databases hold
names like ``AI/ML Expert``, and the server then answers 500 when asked to export that agent.
The nightly backup fails on them (unless ``--allow-partial-agents``, and then they have no
agent file to restore one by one). The runbook this replaces, as one run:

1. list the agents and plan, with the *running* version's name rule, a new name for each one
   it refuses (``AI/ML Expert`` -> ``AI-ML Expert``), unique among the agents;
2. stop here unless ``execute``: the plan is the report;
3. take the server's destructive slot and a verified, pinned ``pre-rename`` backup;
4. rename each agent (``PATCH``), then list again and prove every name is the planned one;
5. record the mapping (id, old, new) in the audit history and the report.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.server_profile import ServerProfile, load_profile
from ..tasks.errors import Failed
from ..tasks.letta.agent_names import name_rule_for, plan_renames
from ..tasks.letta.api import LettaClient
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.lock import destructive_lock
from ..tasks.runs.report import FlowReport, ReportPart
from .backup import backup


class RenameFailed(Failed):
    """Some agents do not carry their planned names after the run."""


class AgentRename(ReportPart):
    """One agent's new name. ``from`` is a Python keyword: the field is ``from_``, ``from`` in
    the JSON."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    agent: str = Field(description="The agent's id.")
    from_: str = Field(alias="from", description="The name the running version refuses.")
    to: str = Field(description="The planned (with --execute: the new) name.")


class RenameReport(FlowReport):
    """``rename_agents()``'s result and ``letta-ops rename-agents --sanitize --json``."""

    server: str
    version: str = Field(description="The running Letta version, whose name rule applies.")
    executed: bool = Field(description="False: a plan, nothing was renamed.")
    renames: list[AgentRename] = Field(description="Every rename, by agent id.")
    message: str | None = Field(default=None, description="Set when there is nothing to do.")
    backup_set: str | None = Field(
        default=None, description="The pinned pre-rename set (None: nothing was renamed)."
    )


@task(name="plan-renames", cache_policy=NO_CACHE)
def plan_task(profile: ServerProfile) -> tuple[str, dict[str, dict[str, str]]]:
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
    return version, plan_renames(agents, name_rule_for(version))


@task(name="apply-agent-renames", cache_policy=NO_CACHE)
def rename_task(profile: ServerProfile, renames: dict[str, dict[str, str]]) -> dict[str, str]:
    with LettaClient(profile.server) as client:
        for agent_id, change in renames.items():
            client.update_agent(agent_id, {"name": change["new"]})
        return {a["id"]: a["name"] for a in client.list_agents()}


def mapping(renames: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    return [{"agent": a, "from": c["old"], "to": c["new"]} for a, c in sorted(renames.items())]


@flow(
    name="letta-rename-agents",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("rename-agents"),
)
def rename_agents(
    server: str | None = None,
    store: str | None = None,
    execute: bool = False,
    lock_timeout_seconds: float = 0,
) -> RenameReport:
    """Plan (and with ``execute`` apply) new names for agents the running version refuses."""
    with audited_run("rename-agents", server, {"execute": execute, "store": store}) as audit:
        logger = get_run_logger()
        profile = load_profile(server)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "rename-agents")
        version, renames = plan_task(profile)
        report = RenameReport.model_validate(
            {
                "server": profile.name,
                "version": version,
                "executed": False,
                "renames": mapping(renames),
            }
        )
        audit.update(versions_from=version, renames=mapping(renames))
        if not renames:
            audit.update(outcome="nothing to do")
            report.message = f"Every agent's name is valid for Letta {version}; nothing to do."
            return report
        if not execute:
            audit.update(outcome="planned")
            publish_report(profile.name, "rename-agents", render_markdown(report))
            return report
        with destructive_lock(profile.name, lock_timeout_seconds, database=profile.database):
            safety = backup(
                server=server,
                store=store,
                allow_partial_agents=True,  # the agents to rename are those without files
                purpose="pre-rename",
                pinned=True,
            )
            report.backup_set = safety.set
            audit.update(backup_set=safety.set)
            live = rename_task(profile, renames)
        wrong = {a: live.get(a) for a, c in renames.items() if live.get(a) != c["new"]}
        report.executed = True
        publish_report(profile.name, "rename-agents", render_markdown(report))
        if wrong:
            raise RenameFailed(
                f"{len(wrong)} agent(s) do not carry their planned names after the run: {wrong}; "
                f"the names before are in {safety.set}."
            )
        logger.info("renamed %d agents on %s", len(renames), profile.name)
        return report


def render_markdown(report: RenameReport) -> str:
    head = "renamed" if report.executed else "plan only (nothing renamed; --execute applies)"
    lines = [f"# Agent names on {report.server} (Letta {report.version}): {head}", ""]
    lines += [f"- `{r.agent}`: {r.from_!r} -> {r.to!r}" for r in report.renames]
    if report.backup_set:
        lines.append(f"- names before are in the backup set {report.backup_set}")
    return "\n".join(lines)


__all__ = ["AgentRename", "RenameFailed", "RenameReport", "rename_agents"]
