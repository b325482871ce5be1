"""The upgrade's steps: pre-flight, each destructive step as a Prefect task, the undo, and the
two strategies (migrate, rebuild); the rehearsal runs the same steps on a copy."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction

from ...blocks.server_profile import ServerProfile, open_backup_store
from ...tasks.audit.rehearsal_history import latest_rehearsal
from ...tasks.errors import Failed, Refused
from ...tasks.letta.agent_import import import_agent_files
from ...tasks.letta.api import LettaClient
from ...tasks.letta.rebuild_names import give_names_back, names_to_give_back, plan_rebuild_names
from ...tasks.letta.server_tls import require_server_can_use_tls
from ...tasks.letta.versions import parse_server_version
from ...tasks.postgres.client_tools import client_tools
from ...tasks.postgres.letta_inventory import (
    agent_inventory,
    archival_passage_count,
    compare_by_id,
    database_size,
)
from ...tasks.postgres.letta_schema import alembic_revision, empty_database
from ...tasks.postgres.privileges import RequestedReset
from ...tasks.postgres.sequence_repair import repair_sequences_task
from ...tasks.runs import timeouts as run_timeouts
from ...tasks.runs.context import publish_report
from ...tasks.runs.phase_timings import PhaseClock
from ...tasks.runs.timed_steps import TimedSteps
from ...tasks.sets.manifest import BackupManifest
from ...tasks.store.objects import ObjectStore
from ..reports.downtime_window import DowntimeWatch
from ..reports.upgrade import Strategy, UpgradePlan, UpgradeReport, render_upgrade_markdown
from .restore_server import (
    empty_database_steps,
    restore_server_from_set,
    with_reset_mode,
)
from .scratch_export import export_via_scratch_copy, exports_v1_agent_files
from .server_steps import start_server_step, stop_server_step


class UpgradeRefused(Refused):
    """Pre-flight said no; nothing was changed."""


class UpgradeFailed(Failed):
    """The upgrade failed after it started changing things; see the rollback result."""


@dataclass
class UpgradeState(TimedSteps):
    """What the rollback needs, and what it did. Lives in the Prefect transaction."""

    profile: ServerProfile
    store: ObjectStore
    manifest: BackupManifest
    old_version: str
    before_agents: dict[str, dict]
    renames: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The names agents end up with (the target's rule); None: the same as ``renames``.
    final_renames: dict[str, dict[str, str]] | None = None
    rollback: dict[str, Any] | None = None
    clock: PhaseClock = field(default_factory=PhaseClock)  # each step a phase of the report

    def names_after(self) -> dict[str, dict[str, str]]:
        return self.renames if self.final_renames is None else self.final_renames

    def __deepcopy__(self, memo: dict) -> UpgradeState:
        """Prefect's ``txn.get`` deep-copies stored values. This state is shared on purpose
        (the rollback hook records its outcome here for the report) and it holds clients
        (boto3) that cannot be copied."""
        return self


# --------------------------------------------------------------------------- pre-flight


@task(name="upgrade-preflight", cache_policy=NO_CACHE)
def preflight(
    profile: ServerProfile,
    to_version: str,
    strategy: Strategy,
    reset: RequestedReset | None = None,
) -> UpgradePlan:
    target = parse_server_version(to_version)
    database = profile.require_database()
    with LettaClient(profile.server) as client:
        health = client.health()
        agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
    current = parse_server_version(health["version"])
    if target == current:
        raise UpgradeRefused(f"{profile.name} already runs Letta {current}; nothing to do.")
    if target < current:
        raise UpgradeRefused(
            f"{to_version} is older than the running {current}; a downgrade is a rollback: "
            "use 'letta-ops rollback'."
        )
    # The runtime must be able to stop this server and start the target (a compose file on
    # 'latest', a server the process runtime did not start: refused before anything stops).
    profile.runtime.require_drivable()
    require_server_can_use_tls(database, str(target))
    size = database_size(database)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < size * 2:
        raise UpgradeRefused(
            f"Only {free} bytes are free in {tempfile.gettempdir()} for a database of "
            f"{size} bytes (dump and restore need about twice that); free some space first."
        )
    # Both strategies may need to empty and restore the database (rebuild does, and any
    # rollback does): prove the role may, before anything stops.
    _, privileges = with_reset_mode(database, reset)
    scratch_export = strategy == "rebuild" and exports_v1_agent_files(str(current))
    if scratch_export and not privileges["scratch_databases"]:
        raise UpgradeRefused(
            f"A rebuild from Letta {current} exports its agents through a scratch database, "
            f"which role {privileges['role']} cannot create; use --strategy migrate (lossless), "
            f"or grant it CREATEDB and run as a superuser."
        )
    # The undo may start the current version again.
    profile.runtime.prepare([str(target), str(current)], log=get_run_logger().info)
    # Rebuild moves agent files, so names must pass the source's export and the target's
    # import on the way, and get back what the target accepts; migrate keeps rows as they are.
    names = plan_rebuild_names(agents, str(current), str(target), strategy)
    rehearsal = latest_rehearsal(profile.name, str(current), str(target), strategy)
    steps = (
        [
            "backup (verified, pinned)",
            "stop server",
            f"alembic upgrade to {target}",
            "repair sequences",
            f"start {target}",
            "verify agents by id and counts",
        ]
        if strategy == "migrate"
        else [
            "backup (verified, pinned)",
            *(
                [f"export agent files from a scratch copy of the backup migrated to {target}"]
                if scratch_export
                else ["rename agents the versions refuse", "export agent files"]
            ),
            "stop server",
            *empty_database_steps(privileges["reset_mode"]),
            f"migrate and start {target}",
            "repair sequences",
            "import agent files",
            "give back names the target accepts",
            "verify agents by name",
        ]
    )
    return UpgradePlan(
        server=profile.name,
        base_url=profile.server.base_url,
        from_version=str(current),
        to_version=str(target),
        strategy=strategy,
        runtime=profile.runtime.describe(),
        pg_tools=client_tools(database).describe(),
        alembic_revision=alembic_revision(database),
        reset_mode=privileges["reset_mode"],
        left_alone=privileges["left_alone"],
        database_role=privileges["role"],
        postgres_major=privileges["server_major"],
        agents=len(agents),
        database_bytes=size,
        free_bytes=free,
        name_rule=names.rule.name,
        renames=names.final,
        transit_renames=names.transit,
        steps=steps,
        rehearsal=rehearsal,
        expected_downtime_seconds=rehearsal["downtime_seconds"]
        if rehearsal
        else (75 if strategy == "migrate" else 90 + 2 * len(agents)),
        expected_downtime_source=(
            f"measured by the rehearsal at {rehearsal['at']} ({rehearsal['age_hours']} h ago)"
            if rehearsal
            else "a rough estimate: no rehearsal of these versions and strategy "
            f"(letta-ops upgrade --to {target} --strategy {strategy} --rehearse)"
        ),
        lossy=strategy == "rebuild",
    )


def newest_backup_at(store: str | None, server: str | None, name: str) -> datetime | None:
    """When the newest complete set of this server was taken (None: none, or no store)."""
    from ...tasks.sets.catalog import list_backup_sets

    try:
        sets = [s for s in list_backup_sets(open_backup_store(store, server), name) if s.complete]
    except Exception:  # noqa: BLE001 - no store configured: nothing to compare with
        return None
    return sets[0].created_at if sets else None


# --------------------------------------------------------------------------- steps


def undo_upgrade(state: UpgradeState) -> None:
    """The upgrade's undo once the server was stopped: everything after the stop is undone by
    restoring the pre-upgrade set and starting the old version."""
    state.clock.lap("undo")
    if state.journal is not None:  # journaled, but the failure stays named by its own step
        state.journal.enter("undo: restore the pre-upgrade set")
    state.rollback = roll_back(state)


@task(name="migrate-database", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.MIGRATE)
def migrate_step(profile: ServerProfile, version: str) -> None:
    profile.runtime.migrate(version, profile.require_database(), log=get_run_logger().info)


@task(name="empty-database", cache_policy=NO_CACHE)
def empty_database_step(profile: ServerProfile) -> None:
    database = profile.require_database()
    empty_database(database, database.reset_mode)


@task(name="rename-agents", cache_policy=NO_CACHE)
def rename_agents_step(profile: ServerProfile, renames: dict[str, dict[str, str]]) -> None:
    with LettaClient(profile.server) as client:
        for agent_id, change in renames.items():
            client.update_agent(agent_id, {"name": change["new"]})


@rename_agents_step.on_rollback
def _rename_back(txn: Transaction) -> None:
    state: UpgradeState = txn.get("state")
    with LettaClient(state.profile.server) as client:
        for agent_id, change in state.renames.items():
            client.update_agent(agent_id, {"name": change["old"]})


@task(name="export-agent-files", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def export_agent_files_step(profile: ServerProfile, workdir: Path) -> dict[str, str]:
    files = {}
    with LettaClient(profile.server) as client:
        for agent in client.list_agents():
            path = workdir / f"{agent['id']}.af"
            path.write_bytes(client.export_agent(agent["id"]))
            files[agent["id"]] = str(path)
    return files


@task(name="export-agent-files-from-scratch-copy", cache_policy=NO_CACHE)
def export_via_scratch_step(state: UpgradeState, target: str, workdir: Path) -> dict[str, str]:
    return export_via_scratch_copy(
        state.profile,
        state.store,
        state.manifest,
        target,
        workdir,
        state.renames,
        log=get_run_logger().info,
    )


@task(name="import-agent-files", cache_policy=NO_CACHE)
def import_agent_files_step(profile: ServerProfile, files: dict[str, str]) -> list[str]:
    with LettaClient(profile.server) as client:
        return import_agent_files(client, files, log=get_run_logger().warning)


@task(name="give-names-back", cache_policy=NO_CACHE)
def give_names_back_step(profile: ServerProfile, state: UpgradeState) -> dict[str, str]:
    with LettaClient(profile.server) as client:
        return give_names_back(client, names_to_give_back(state.renames, state.names_after()))


@task(name="agents-through-api", cache_policy=NO_CACHE)
def list_agents_step(profile: ServerProfile) -> dict[str, str]:
    with LettaClient(profile.server) as client:
        return {a["id"]: a["name"] for a in client.list_agents()}


@task(name="agent-inventory", cache_policy=NO_CACHE)
def inventory_step(profile: ServerProfile) -> dict[str, dict]:
    return agent_inventory(profile.require_database())


# --------------------------------------------------------------------------- rollback


def roll_back(state: UpgradeState) -> dict[str, Any]:
    """Stop, restore the pre-upgrade dump into a recreated database, start the old version,
    and prove the per-table counts and agents equal the pre-upgrade ones."""
    return restore_server_from_set(state.profile, state.store, state.manifest)


# --------------------------------------------------------------------------- strategies


def run_migrate(state: UpgradeState, target: str, start_timeout: float) -> dict[str, Any]:
    profile = state.profile
    state.enter("stop server")
    watch = DowntimeWatch()
    stop_server_step(profile)
    stopped = time.monotonic()
    state.enter(f"alembic upgrade to {target}")
    migrate_step(profile, target)
    state.enter("repair sequences")
    sequences = repair_sequences_task(profile.require_database())
    state.enter(f"start {target}")
    start_server_step(profile, target, start_timeout)
    watch.serving()
    state.enter("verify")
    after_api = list_agents_step(profile)
    after = inventory_step(profile)
    problems = compare_by_id(state.before_agents, after)
    if set(after_api) != set(state.before_agents):
        problems.append(
            {
                "problem": "agents listed by the API differ from before",
                "missing": sorted(set(state.before_agents) - set(after_api)),
            }
        )
    if problems:
        raise UpgradeFailed(f"verification after migrate failed: {problems}")
    return {
        "downtime_seconds": round(time.monotonic() - stopped, 1),
        "downtime_window": watch.window(),
        "sequences": sequences,
        "agents_after": len(after_api),
        "verification": per_agent_verification(state.before_agents, after, {}),
    }


def run_rebuild(state: UpgradeState, target: str, start_timeout: float) -> dict[str, Any]:
    profile = state.profile
    passages_before = archival_passage_count(profile.require_database())
    with tempfile.TemporaryDirectory(prefix="letta-ops-rebuild-") as workdir:
        state.enter("export agent files")
        if exports_v1_agent_files(state.old_version):
            # The source writes agent files the target refuses: export from a scratch copy.
            files = export_via_scratch_step(state, target, Path(workdir))
        else:
            rename_agents_step(profile, state.renames)
            files = export_agent_files_step(profile, Path(workdir))
        state.enter("stop server")
        watch = DowntimeWatch()
        stop_server_step(profile)
        stopped = time.monotonic()
        state.enter(f"empty database ({profile.require_database().reset_mode})")
        empty_database_step(profile)
        state.enter(f"alembic upgrade to {target}")
        migrate_step(profile, target)
        state.enter(f"start {target}")
        start_server_step(profile, target, start_timeout)
        watch.serving()
        state.enter("repair sequences")
        sequences = repair_sequences_task(profile.require_database())
        state.enter("import agent files")
        import_agent_files_step(profile, files)
        state.enter("give back names the target accepts")
        give_names_back_step(profile, state)
    state.enter("verify")
    after_api = list_agents_step(profile)
    after = inventory_step(profile)
    final = state.names_after()
    expected_names = sorted(
        final.get(a, {}).get("new", v["name"]) for a, v in state.before_agents.items()
    )
    if sorted(after_api.values()) != expected_names:
        raise UpgradeFailed(
            f"verification after rebuild failed: expected agents {expected_names}, "
            f"found {sorted(after_api.values())}"
        )
    by_name = {v["name"]: v for v in after.values()}
    matched = {
        a: by_name.get(final.get(a, {}).get("new", v["name"]), {})
        for a, v in state.before_agents.items()
    }
    return {
        "downtime_seconds": round(time.monotonic() - stopped, 1),
        "downtime_window": watch.window(),
        "sequences": sequences,
        "agents_after": len(after_api),
        "verification": per_agent_verification(state.before_agents, matched, final),
        "not_carried": {
            "messages": sum(
                max(0, v["messages"] - matched[a].get("messages", 0))
                for a, v in state.before_agents.items()
            ),
            "archival_passages": passages_before
            - archival_passage_count(profile.require_database()),
            "note": "agent files carry only part of the message history, no archival "
            "passages, no runs or steps; the pre-upgrade pg_dump holds all of it",
        },
    }


def per_agent_verification(
    before: dict[str, dict], after: dict[str, dict], renames: dict[str, dict[str, str]]
) -> list[dict]:
    """The report's rows: each agent's name, messages and blocks before and after."""
    rows = []
    for agent_id, old in sorted(before.items(), key=lambda kv: kv[1]["name"]):
        new = after.get(agent_id, {})
        rows.append(
            {
                "agent": agent_id,
                "name_before": old["name"],
                "name_after": renames.get(agent_id, {}).get("new", old["name"]),
                "messages_before": old["messages"],
                "messages_after": new.get("messages"),
                "blocks_before": old["blocks"],
                "blocks_after": new.get("blocks"),
            }
        )
    return rows


def planned_upgrade(
    report: UpgradeReport, clock: PhaseClock, audit: Any, server: str
) -> UpgradeReport:
    """A dry run's end, the same for every upgrade path: the phases so far on the report, the
    audit record closed as planned, the plan published as the run's artifact."""
    clock.stop()
    report.phases = clock.timings()
    audit.update(outcome="planned")
    publish_report(server, "upgrade", render_upgrade_markdown(report))
    return report
