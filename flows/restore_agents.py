"""Restore single agents from a backup set's agent files into a running server.

The runbook this replaces, as one run:

1. pre-flight, nothing changes: the set has a manifest and is this server's; every agent asked
   for (by id or exact name) is in it, unambiguous, and has an agent file whose sha256 matches;
   each gets a name the running version accepts, and none collides with a live agent (unless
   restored ``as_copy``, beside the live one, as "<name> restored <set date>");
2. import each file (``append_copy_suffix=false``, live tools left as they are);
3. report every agent with its new id, and prove its memory blocks and message count are the
   ones in its file.

Agent files carry only part of an agent (no archival passages, part of the message history);
the pg_dump holds everything, and 'letta-ops restore' puts it on a scratch database.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.letta.agent_file import rename_agent_file, summarize_agent_file
from ..tasks.letta.agent_import import import_agent_once
from ..tasks.letta.agent_names import name_rule_for
from ..tasks.letta.api import LettaClient
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.admission import require_intact, require_same_server
from ..tasks.sets.agent_restore import AgentRestoreStep, plan_agent_restore
from ..tasks.sets.catalog import load_manifest
from ..tasks.sets.manifest import BackupManifest
from ..tasks.sets.verification import downloaded
from ..tasks.store.objects import ObjectStore
from .steps.agent_checks import check_restored_step
from .verify import resolve_set


class AgentRestoreFailed(Failed):
    """An import failed; agents imported before it stay and are named in the message."""


class RestoredAgent(ReportPart):
    """One agent imported from its file, checked against the file by its new id."""

    agent_id: str = Field(description="Its id in the backup set.")
    name_in_set: str
    restored_as: str = Field(description="Its name on the server now.")
    renamed: bool = Field(description="Restored under another name than in the set.")
    new_id: str | None = Field(description="The id the server gave the import.")
    blocks: int = Field(description="Memory blocks the restored agent has.")
    blocks_match: bool = Field(description="Its blocks (label and value) are the file's.")
    messages_in_file: int
    messages_restored: int | None = Field(description="Messages in SQL (None: no database).")
    ok: bool = Field(description="Name, blocks and messages match the file.")


class AgentRestoreReport(FlowReport):
    """``restore_agents()``'s result and ``letta-ops restore-agents --json``."""

    set: str = Field(description="SERVER/SET_ID the agents came from.")
    server: str
    letta_version: str = Field(description="The running Letta version they were imported into.")
    as_copy: bool = Field(description="Restored beside live agents under new names.")
    agents: list[RestoredAgent]
    outcome: str = Field(description="succeeded, or restored, check failed.")
    note: str = Field(description="What agent files do not carry.")


@task(name="restore-agents-preflight", cache_policy=NO_CACHE)
def preflight(
    profile: ServerProfile,
    store: ObjectStore,
    backup_set: str,
    agents: list[str],
    as_copy: bool,
) -> tuple[BackupManifest, list[AgentRestoreStep], str]:
    server_name, set_id = resolve_set(store, backup_set, profile.name)
    manifest = load_manifest(store, server_name, set_id)
    require_same_server(manifest, profile.name)
    with LettaClient(profile.server) as client:
        version = client.health()["version"]
        live = client.list_agents()
    steps = plan_agent_restore(manifest, agents, live, name_rule_for(version), as_copy)
    require_intact(store, manifest, [s.file for s in steps])
    return manifest, steps, version


# No task retries: a retried import could create the agent twice; import_agent_once retries
# only after proving the first attempt created nothing.
@task(name="import-agent-file", cache_policy=NO_CACHE)
def import_agent_step(
    profile: ServerProfile, store: ObjectStore, manifest: BackupManifest, step: AgentRestoreStep
) -> dict[str, Any]:
    with downloaded(store, step.file, manifest.objects[step.file].sha256) as path:
        data = path.read_bytes()
    exported = summarize_agent_file(data)
    with LettaClient(profile.server) as client:
        # Live tools stay as they are: a restore adds an agent, it does not roll tools back.
        new_ids = import_agent_once(
            client,
            rename_agent_file(data, step.restore_as),
            filename=f"{step.agent_id}.af",
            log=get_run_logger().warning,
            name=step.restore_as,
            override_existing_tools=False,
        )
    return {
        **step.to_dict(),
        "new_ids": list(new_ids),
        "blocks_in_file": exported.blocks,
        "messages_in_file": exported.messages,
    }


def render_restore_agents_markdown(report: AgentRestoreReport) -> str:
    lines = [f"# Restore agents from {report.set}: **{report.outcome}**", ""]
    for row in report.agents:
        lines.append(
            f"- {row.name_in_set!r} ({row.agent_id}) -> {row.restored_as!r} "
            f"new id `{row.new_id}`: {row.blocks} blocks, "
            f"{row.messages_restored} of {row.messages_in_file} messages "
            f"{'ok' if row.ok else 'MISMATCH'}"
        )
    lines.append(f"- {report.note}")
    return "\n".join(lines)


@flow(
    name="letta-restore-agents",
    timeout_seconds=run_timeouts.MAINTENANCE,
    flow_run_name=run_name("restore-agents", "backup_set"),
)
def restore_agents(
    backup_set: str,
    agents: list[str],
    server: str | None = None,
    store: str | None = None,
    as_copy: bool = False,
) -> AgentRestoreReport:
    """Restore ``agents`` (ids or exact names) from ``backup_set``'s agent files into the
    running server; ``as_copy`` restores them beside live agents under new names."""
    parameters = {"backup_set": backup_set, "agents": agents, "as_copy": as_copy}
    with audited_run("restore-agents", server, parameters) as record:
        logger = get_run_logger()
        profile = load_profile(server)
        object_store = open_backup_store(store, server)
        record.update(server=profile.name, store=object_store)
        tag_current_run(profile.name, "restore-agents")
        try:
            manifest, steps, version = preflight(profile, object_store, backup_set, agents, as_copy)
        except ValueError:
            record.update(outcome="refused")
            raise
        label = f"{manifest.server}/{manifest.set_id}"
        record.update(
            backup_set=label,
            versions_from=manifest.letta_version,
            versions_to=version,
            renames={s.name_in_set: s.restore_as for s in steps if s.renamed},
        )
        rows = []
        for step in steps:
            try:
                imported = import_agent_step(profile, object_store, manifest, step)
            except Exception as exc:
                done = ", ".join(f"{r['restored_as']!r} ({r['new_id']})" for r in rows)
                record.update(restored=rows)
                raise AgentRestoreFailed(
                    f"Importing {step.name_in_set!r} ({step.agent_id}) from {label} failed "
                    f"({exc}); restored before it: {done or 'none'}."
                ) from exc
            rows.append(check_restored_step(profile, imported))
        report = AgentRestoreReport(
            set=label,
            server=profile.name,
            letta_version=version,
            as_copy=as_copy,
            agents=rows,
            outcome="succeeded" if all(r["ok"] for r in rows) else "restored, check failed",
            note="agent files carry memory blocks and part of the message history, no "
            "archival passages; the set's pg_dump holds everything",
        )
        record.update(restored=rows, outcome=report.outcome)
        publish_report(profile.name, "restore-agents", render_restore_agents_markdown(report), rows)
        if report.outcome != "succeeded":
            raise AgentRestoreFailed(
                f"Agents from {label} were imported but do not match their files: "
                + "; ".join(f"{r['restored_as']!r} ({r['new_id']})" for r in rows if not r["ok"])
            )
        logger.info("restored %d agents from %s", len(rows), label)
        return report


__all__ = ["AgentRestoreFailed", "AgentRestoreReport", "RestoredAgent", "restore_agents"]
