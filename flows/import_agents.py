"""Import a folder of agent files into a running server, each agent once, each verified.

The runbook this replaces: ``for f in agent-*.json; do curl -F file=@$f .../import; done``
after an upgrade, where the 16th agent fails on the ``/`` in its name, a second run imports
every agent twice, and nobody checks what came across. As one run:

1. read the folder (``export-agents``' manifest and sha256s, or files Letta's export endpoint
   wrote, named by agent id); refuse it whole if any file is unreadable, changed or nameless;
2. plan: agents already on the server by id, or imported there before by letta-ops (recorded
   in the agent's metadata), are skipped; every other agent gets the name the server's rule
   accepts, unique among live agents (renames recorded); with ``dry_run`` stop here;
3. import each file (``append_copy_suffix=false``, live tools left as they are) and record its
   source id on the new agent, so a second import skips it;
4. verify each agent by its new id: name, memory blocks (label and value) against the file,
   messages in SQL at least those the file carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.server_profile import ServerProfile, load_profile
from ..tasks.errors import Failed
from ..tasks.letta.agent_file import rename_agent_file
from ..tasks.letta.agent_folder import (
    SOURCE_ID_KEY,
    FolderAgent,
    ImportStep,
    plan_import,
    read_folder,
    require_importable,
)
from ..tasks.letta.agent_import import import_agent_once
from ..tasks.letta.agent_names import name_rule_for
from ..tasks.letta.api import LettaClient
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart
from .steps.agent_checks import check_restored_step


class AgentImportFailed(Failed):
    """An import failed or an imported agent does not match its file."""


class ImportedAgent(ReportPart):
    """One agent file: skipped (and why), or imported and checked against the file."""

    agent_id: str = Field(description="Its id on the server that exported it.")
    file: str
    name_in_file: str
    imported_as: str = Field(description="Its name on this server.")
    renamed: bool = Field(description="Imported under another name than in its file.")
    skipped: str | None = Field(description="Why it was not imported (None: imported).")
    new_id: str | None = Field(description="The id the server gave the import.")
    blocks_in_file: int
    blocks: int | None = Field(description="Memory blocks the imported agent has.")
    blocks_match: bool | None = Field(description="Its blocks (label and value) are the file's.")
    messages_in_file: int
    messages_imported: int | None = Field(description="Messages in SQL (None: no database).")
    ok: bool | None = Field(description="Name, blocks and messages match the file.")


class AgentImportReport(FlowReport):
    """``import_agents()``'s result and ``letta-ops import-agents --json``."""

    server: str
    letta_version: str = Field(description="The running Letta version, whose name rule applies.")
    folder: str
    dry_run: bool
    agents: list[ImportedAgent]
    imported: int
    skipped: int
    renamed: int
    outcome: str = Field(description="planned, succeeded, or imported, check failed.")


@task(name="plan-agent-import", cache_policy=NO_CACHE)
def plan_task(profile: ServerProfile, agents: list[FolderAgent]) -> tuple[str, list[ImportStep]]:
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        live = client.list_agents()
    require_importable(agents, version)
    return version, plan_import(agents, live, name_rule_for(version))


@task(name="import-agent-from-folder", cache_policy=NO_CACHE)
def import_task(profile: ServerProfile, folder: Path, step: ImportStep) -> list[str]:
    data = (folder / step.file).read_bytes()
    if step.renamed:
        data = rename_agent_file(data, step.import_as)
    with LettaClient(profile.server) as client:
        # A lost answer is looked for before a second try (no duplicate agent).
        new_ids = import_agent_once(
            client,
            data,
            filename=step.file,
            log=get_run_logger().warning,
            name=step.import_as,
            override_existing_tools=False,
        )
        for new_id in new_ids[:1]:
            metadata = client.get_agent(new_id).get("metadata") or {}
            client.update_agent(new_id, {"metadata": {**metadata, SOURCE_ID_KEY: step.agent_id}})
    return new_ids


def _row(step: ImportStep, agent: FolderAgent, checked: dict[str, Any] | None) -> dict:
    return {
        "agent_id": step.agent_id,
        "file": step.file,
        "name_in_file": step.name_in_file,
        "imported_as": step.import_as,
        "renamed": step.renamed,
        "skipped": step.skip,
        "new_id": checked["new_id"] if checked else None,
        "blocks_in_file": len(agent.blocks),
        "blocks": checked["blocks"] if checked else None,
        "blocks_match": checked["blocks_match"] if checked else None,
        "messages_in_file": agent.messages,
        "messages_imported": checked["messages_restored"] if checked else None,
        "ok": checked["ok"] if checked else None,
    }


def render_import_markdown(report: AgentImportReport) -> str:
    lines = [f"# Import agents from {report.folder} into {report.server}: {report.outcome}", ""]
    for a in report.agents:
        if a.skipped:
            lines.append(f"- {a.name_in_file!r} ({a.agent_id}): skipped, {a.skipped}")
        elif report.dry_run:
            lines.append(f"- {a.name_in_file!r} ({a.agent_id}): would import as {a.imported_as!r}")
        else:
            lines.append(
                f"- {a.name_in_file!r} ({a.agent_id}) -> {a.imported_as!r} `{a.new_id}`: "
                f"{a.blocks} blocks, {a.messages_imported} of {a.messages_in_file} messages "
                f"{'ok' if a.ok else 'MISMATCH'}"
            )
    return "\n".join(lines)


@flow(
    name="letta-import-agents",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("import-agents"),
)
def import_agents(
    folder: str, server: str | None = None, dry_run: bool = False
) -> AgentImportReport:
    """Import the agent files of ``folder`` into the running server (see the module doc)."""
    source = Path(folder).expanduser()
    with audited_run("import-agents", server, {"folder": str(source), "dry_run": dry_run}) as audit:
        profile = load_profile(server)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "import-agents")
        try:
            agents = read_folder(source)
            version, steps = plan_task(profile, agents)
        except ValueError:
            audit.update(outcome="refused")
            raise
        by_id = {a.agent_id: a for a in agents}
        audit.update(
            versions_to=version,
            renames={s.name_in_file: s.import_as for s in steps if s.renamed and not s.skip},
        )
        rows: list[dict] = []
        for step in steps:
            checked = None
            if step.skip is None and not dry_run:
                try:
                    new_ids = import_task(profile, source, step)
                except Exception as exc:
                    done = ", ".join(f"{r['imported_as']!r} ({r['new_id']})" for r in rows)
                    audit.update(restored=rows)
                    raise AgentImportFailed(
                        f"Importing {step.file} ({step.name_in_file!r}) failed ({exc}); "
                        f"imported before it: {done or 'none'}. Run the import again: agents "
                        "already imported are skipped."
                    ) from exc
                agent = by_id[step.agent_id]
                checked = check_restored_step(
                    profile,
                    {
                        "agent_id": step.agent_id,
                        "name_in_set": step.name_in_file,
                        "restore_as": step.import_as,
                        "renamed": step.renamed,
                        "new_ids": new_ids,
                        "blocks_in_file": agent.blocks,
                        "messages_in_file": agent.messages,
                    },
                )
            rows.append(_row(step, by_id[step.agent_id], checked))
        imported = [r for r in rows if r["new_id"]]
        outcome = (
            "planned"
            if dry_run
            else "succeeded"
            if all(r["ok"] for r in imported)
            else "imported, check failed"
        )
        report = AgentImportReport(
            server=profile.name,
            letta_version=version,
            folder=str(source),
            dry_run=dry_run,
            agents=rows,
            imported=len(imported),
            skipped=sum(1 for r in rows if r["skipped"]),
            renamed=sum(1 for r in rows if r["renamed"] and not r["skipped"]),
            outcome=outcome,
        )
        audit.update(restored=rows, outcome=outcome)
        publish_report(profile.name, "import-agents", render_import_markdown(report))
        if outcome == "imported, check failed":
            wrong = [f"{r['imported_as']!r} ({r['new_id']})" for r in imported if not r["ok"]]
            raise AgentImportFailed(
                "Agents were imported but do not match their files: " + "; ".join(wrong)
            )
        get_run_logger().info("imported %d agents from %s", len(imported), source)
        return report


__all__ = ["AgentImportFailed", "AgentImportReport", "ImportedAgent", "import_agents"]
