"""Upgrade a Letta server to a pinned version, or put it back exactly where it was.

The runbook this replaces, as one run:

1. pre-flight: healthy, current version and alembic revision known, target installable and
   newer, disk room for the dump, agent names checked against the target's rule (the plan);
2. take the one destructive lock of this server (a strict Prefect global concurrency limit);
3. optionally wait for an operator's approval;
4. back up (the backup flow, verified, pinned); nothing destructive happens before this;
5. strategy *migrate* (lossless, default): stop -> alembic upgrade to the target -> repair
   sequences -> start the target -> verify every agent by id, message and block counts;
   strategy *rebuild* (the old runbook): rename agents the versions refuse -> export them ->
   stop -> drop/recreate the database -> pgvector -> migrate and start the target -> repair
   sequences -> import the agent files -> verify by name, and report what files do not carry;
6. any failure after the first destructive step rolls back inside a Prefect transaction:
   stop, restore the dump into a recreated database, start the old version, prove the counts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, transaction
from pydantic import ConfigDict, Field

from letta_ops.blocks.server_profile import ServerProfile, load_profile, open_backup_store
from letta_ops.flows import run_timeouts
from letta_ops.flows.audit_record import audited_run, counts_summary, server_counts
from letta_ops.flows.backup import backup
from letta_ops.flows.downtime_window import DowntimeWatch, DowntimeWindow
from letta_ops.flows.flow_report import FlowReport, ReportPart, StoredPart
from letta_ops.flows.operator_approval import ApprovalDeclined, await_operator_approval
from letta_ops.flows.restore_server import (
    ServerRestore,
    empty_database_steps,
    restore_server_from_set,
    start_set_version,
    with_reset_mode,
)
from letta_ops.flows.run_context import publish_report, run_name, tag_current_run
from letta_ops.flows.scratch_export import export_via_scratch_copy, exports_v1_agent_files
from letta_ops.flows.server_lock import destructive_lock
from letta_ops.tasks.agent_names import name_rule_for, plan_renames, strictest_rule
from letta_ops.tasks.backup_catalog import load_manifest
from letta_ops.tasks.backup_manifest import BackupManifest, set_prefix
from letta_ops.tasks.errors import Failed, Refused
from letta_ops.tasks.letta_api import LettaClient
from letta_ops.tasks.letta_inventory import (
    agent_inventory,
    archival_passage_count,
    compare_by_id,
    database_size,
)
from letta_ops.tasks.letta_postgres import alembic_revision, database_error_message, empty_database
from letta_ops.tasks.letta_server_tls import require_server_can_use_tls
from letta_ops.tasks.letta_versions import ALEMBIC_HEADS, LettaVersion, parse_server_version
from letta_ops.tasks.object_store import ObjectStore
from letta_ops.tasks.pg_client_tools import client_tools
from letta_ops.tasks.postgres_privileges import RequestedReset
from letta_ops.tasks.rehearsal_history import latest_rehearsal, rehearsal_is_current
from letta_ops.tasks.run_journal import JournaledSteps
from letta_ops.tasks.sequence_repair import repair_sequences

if TYPE_CHECKING:
    from letta_ops.flows.rehearse import RehearsalReport

Strategy = Literal["migrate", "rebuild"]


class UpgradeRefused(Refused):
    """Pre-flight said no; nothing was changed."""


class UpgradeFailed(Failed):
    """The upgrade failed after it started changing things; see the rollback result."""


@dataclass
class UpgradeState(JournaledSteps):
    """What the rollback needs, and what it did. Lives in the Prefect transaction."""

    profile: ServerProfile
    store: ObjectStore
    manifest: BackupManifest
    old_version: str
    before_agents: dict[str, dict]
    renames: dict[str, dict[str, str]] = field(default_factory=dict)
    rollback: dict[str, Any] | None = None

    def __deepcopy__(self, memo: dict) -> UpgradeState:
        """Prefect's ``txn.get`` deep-copies stored values. This state is shared on purpose
        (the rollback hook records its outcome here for the report) and it holds clients
        (boto3) that cannot be copied."""
        return self


# --------------------------------------------------------------------------- the report


class Rename(ReportPart):
    old: str = Field(description="The agent's name now.")
    new: str = Field(description="The name the target version accepts.")


class TimedStep(StoredPart):
    step: str
    seconds: float


class RehearsalRecord(StoredPart):
    """The newest successful rehearsal of these versions and strategy (audit history)."""

    run: str = Field(description="The rehearsal's audit record id.")
    at: datetime = Field(description="When it ended.")
    age_hours: float
    downtime_seconds: int | float = Field(description="The downtime it measured.")
    downtime_steps: list[TimedStep]
    source_set: str | None = Field(description="The set the copy was restored from.")


class UpgradePlan(ReportPart):
    """What the pre-flight found and what the upgrade will do; nothing changed yet."""

    server: str
    base_url: str
    from_version: str
    to_version: str
    strategy: str = Field(description="migrate (lossless) or rebuild (agent files).")
    runtime: str = Field(description="How the runtime stops and starts the server.")
    pg_tools: str = Field(description="Which PostgreSQL client tools run, and where.")
    alembic_revision: str | None
    reset_mode: str = Field(description="How the database is emptied before a restore.")
    left_alone: list[str] = Field(
        default_factory=list,
        description="What the database holds that is not Letta's and stays as it is (the "
        "operator's tables in Letta's schema one by one, other schemas as a whole).",
    )
    database_role: str
    postgres_major: int
    agents: int
    database_bytes: int
    free_bytes: int = Field(description="Free bytes in the temporary directory.")
    name_rule: str = Field(description="The agent-name rule the renames follow.")
    renames: dict[str, Rename] = Field(description="Agent id -> the rename the rule needs.")
    steps: list[str]
    rehearsal: RehearsalRecord | None = Field(description="None: never rehearsed.")
    expected_downtime_seconds: int | float
    expected_downtime_source: str = Field(description="Measured by a rehearsal, or a guess.")
    lossy: bool = Field(description="Agent files only (rebuild): not everything carries.")
    rehearsal_current: bool | None = Field(
        None,
        description="A rehearsal not older than the newest backup exists (None: not asked, "
        "as in a rehearsal's own plan).",
    )

    def rename_map(self) -> dict[str, dict[str, str]]:
        """The renames as the steps take them: ``{agent_id: {"old": ..., "new": ...}}``."""
        return {agent_id: change.model_dump() for agent_id, change in self.renames.items()}


class SequenceRepair(ReportPart):
    """What the sequence repair after the migration changed and checked."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    schema_: str = Field(alias="schema", description="The schema repaired.")
    dry_run: bool
    changes: list[dict[str, Any]] = Field(
        description="Changes made; their keys vary by action (action, sequence, table, "
        "column, from, to)."
    )
    checked: list[dict[str, Any]] = Field(
        description="Every column checked (table, column, sequence, source, max, next_value, ok)."
    )


class AgentVerification(ReportPart):
    """One agent before and after the upgrade."""

    agent: str = Field(description="The agent's id before.")
    name_before: str
    name_after: str
    messages_before: int
    messages_after: int | None = Field(description="None: the agent is missing after.")
    blocks_before: int
    blocks_after: int | None = Field(description="None: the agent is missing after.")


class NotCarried(ReportPart):
    """What a rebuild's agent files did not carry (the pre-upgrade dump still holds it)."""

    messages: int
    archival_passages: int
    note: str


class UpgradeReport(FlowReport):
    """``upgrade()``'s result and ``letta-ops upgrade --json``; with ``dry_run`` the plan."""

    model_config = ConfigDict(validate_assignment=True)

    plan: UpgradePlan
    dry_run: bool
    outcome: str = Field(
        description="planned, succeeded, failed, or failed, rolled back (in the audit)."
    )
    approved_by: str | None = Field(None, description="Who approved (None: not asked).")
    backup_set: str | None = Field(None, description="The pre-upgrade set (None: planned).")
    started_at: datetime | None = None
    error: str | None = Field(None, description="The cause of a failure, with its step.")
    rollback: ServerRestore | None = Field(None, description="None: no rollback was needed.")
    downtime_seconds: float | None = Field(None, description="Stopped -> verified.")
    downtime_window: DowntimeWindow | None = Field(None, description="When clients were refused.")
    sequences: SequenceRepair | None = None
    agents_after: int | None = None
    verification: list[AgentVerification] | None = Field(None, description="Per agent.")
    not_carried: NotCarried | None = Field(None, description="Rebuild only.")
    finished_at: datetime | None = None


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
    # import; migrate keeps rows as they are, so only the target's rule is reported.
    rule = (
        strictest_rule(str(current), str(target))
        if strategy == "rebuild"
        else name_rule_for(str(target))
    )
    renames = plan_renames(agents, rule)
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
        name_rule=rule.name,
        renames=renames,
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
    from letta_ops.tasks.backup_catalog import list_backup_sets

    try:
        sets = [s for s in list_backup_sets(open_backup_store(store, server), name) if s.complete]
    except Exception:  # noqa: BLE001 - no store configured: nothing to compare with
        return None
    return sets[0].created_at if sets else None


# --------------------------------------------------------------------------- steps


@task(
    name="stop-letta-server", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.SERVER_STOP_START
)
def stop_server_step(profile: ServerProfile) -> None:
    profile.runtime.stop(log=get_run_logger().info)


@stop_server_step.on_rollback
def _restore_previous_state(txn: Transaction) -> None:
    """The first destructive step's undo: everything after it is undone by restoring."""
    state: UpgradeState = txn.get("state")
    if state.journal is not None:  # journaled, but the failure stays named by its own step
        state.journal.enter("undo: restore the pre-upgrade set")
    state.rollback = roll_back(state)


@task(name="migrate-database", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.MIGRATE)
def migrate_step(profile: ServerProfile, version: str) -> None:
    profile.runtime.migrate(version, profile.require_database(), log=get_run_logger().info)


@task(name="repair-sequences", cache_policy=NO_CACHE)
def repair_sequences_step(profile: ServerProfile) -> dict:
    return repair_sequences(profile.require_database()).to_dict()


@task(
    name="start-letta-server", cache_policy=NO_CACHE, timeout_seconds=run_timeouts.SERVER_STOP_START
)
def start_server_step(profile: ServerProfile, version: str, timeout: float) -> dict:
    return start_set_version(
        profile.runtime, profile.require_database(), version, timeout, log=get_run_logger().info
    )


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
    imported = []
    with LettaClient(profile.server) as client:
        for agent_id, path in sorted(files.items()):
            imported += client.import_agent(Path(path).read_bytes(), filename=f"{agent_id}.af")
    return imported


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
    sequences = repair_sequences_step(profile)
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
        "verification": _per_agent(state.before_agents, after, {}),
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
        sequences = repair_sequences_step(profile)
        state.enter("import agent files")
        import_agent_files_step(profile, files)
    state.enter("verify")
    after_api = list_agents_step(profile)
    after = inventory_step(profile)
    expected_names = sorted(
        state.renames.get(a, {}).get("new", v["name"]) for a, v in state.before_agents.items()
    )
    if sorted(after_api.values()) != expected_names:
        raise UpgradeFailed(
            f"verification after rebuild failed: expected agents {expected_names}, "
            f"found {sorted(after_api.values())}"
        )
    by_name = {v["name"]: v for v in after.values()}
    matched = {
        a: by_name.get(state.renames.get(a, {}).get("new", v["name"]), {})
        for a, v in state.before_agents.items()
    }
    return {
        "downtime_seconds": round(time.monotonic() - stopped, 1),
        "downtime_window": watch.window(),
        "sequences": sequences,
        "agents_after": len(after_api),
        "verification": _per_agent(state.before_agents, matched, state.renames),
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


def _per_agent(
    before: dict[str, dict], after: dict[str, dict], renames: dict[str, dict[str, str]]
) -> list[dict]:
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


# --------------------------------------------------------------------------- the audit


def audit_renames(renames: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    return [{"agent": a, "from": c["old"], "to": c["new"]} for a, c in sorted(renames.items())]


def rollback_outcome(rollback: dict[str, Any] | None) -> str:
    """One line for the audit: not needed, succeeded (and to which version), or failed why."""
    if rollback is None:
        return "not needed"
    if rollback.get("ok"):
        return f"succeeded: Letta {rollback.get('version')} restored"
    return f"failed: {str(rollback.get('error') or 'counts differ')[:180]}"


# --------------------------------------------------------------------------- the flow


def render_upgrade_markdown(report: UpgradeReport) -> str:
    plan = report.plan
    lines = [
        f"# Upgrade {plan.server}: {plan.from_version} -> {plan.to_version} "
        f"({plan.strategy}): **{report.outcome}**",
        "",
        f"- runtime: {plan.runtime}",
    ]
    if report.error:
        lines += [f"- cause: {report.error}"]
    if report.rollback:
        rb = report.rollback
        lines += [
            f"- rollback: {'succeeded' if rb.ok else 'FAILED'} "
            f"(version {rb.version}, {rb.seconds} s) {rb.error or ''}"
        ]
    if report.downtime_seconds is not None:
        lines += [f"- downtime (stopped -> verified): {report.downtime_seconds} s"]
    if report.backup_set:
        lines += [f"- pre-upgrade backup set: {report.backup_set}"]
    for agent_id, change in plan.renames.items():
        lines += [f"- renamed `{agent_id}`: {change.old!r} -> {change.new!r}"]
    if report.not_carried:
        nc = report.not_carried
        lines += [
            f"- not carried by agent files: {nc.messages} messages, "
            f"{nc.archival_passages} archival passages ({nc.note})"
        ]
    return "\n".join(lines)


@flow(name="letta-upgrade", flow_run_name=run_name("upgrade", "to_version"))
def upgrade(
    to_version: str,
    server: str | None = None,
    store: str | None = None,
    strategy: Strategy = "migrate",
    dry_run: bool = False,
    approval: bool = False,
    lock_timeout_seconds: float = 0,
    start_timeout_seconds: float = 240,
    reset: RequestedReset | None = None,
    require_rehearsal: bool = False,
    rehearse: bool = False,
) -> UpgradeReport | RehearsalReport:
    """Upgrade one server to ``to_version`` by ``strategy``; roll back on any failure.

    ``require_rehearsal`` (on in the deployment): refuse unless a successful rehearsal of these
    versions and strategy exists that is not older than the server's newest backup.
    ``rehearse``: run the upgrade on a restored copy instead (:mod:`flows.rehearse`); the
    server is not touched.

    ``reset`` says how a database is emptied before a restore or rebuild (``recreate`` or
    ``in-place``); by default the database block's setting, else whatever the role may do.
    """
    if rehearse:
        from letta_ops.flows.rehearse import rehearse as rehearse_flow

        return rehearse_flow(
            to_version, server, store, strategy, start_timeout_seconds=start_timeout_seconds
        )
    with audited_run("upgrade", server) as audit:
        logger = get_run_logger()
        profile = load_profile(server, need_database=True)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "upgrade")
        plan = preflight(profile, to_version, strategy, reset)
        # Every later step, the automatic rollback included, empties the database this way.
        profile.database = profile.require_database().model_copy(
            update={"reset_mode": plan.reset_mode}
        )
        audit.update(
            versions_from=plan.from_version,
            versions_to=plan.to_version,
            strategy=strategy,
            renames=audit_renames(plan.rename_map()) if strategy == "rebuild" else None,
        )
        plan.rehearsal_current = rehearsal_is_current(
            plan.rehearsal.model_dump(mode="json") if plan.rehearsal else None,
            newest_backup_at(store, server, profile.name),
        )
        if require_rehearsal and not plan.rehearsal_current and not dry_run:
            audit.update(outcome="refused")
            raise UpgradeRefused(
                f"No rehearsal of {plan.from_version} -> {plan.to_version} "
                f"({strategy}) newer than the newest backup of {profile.name}; run "
                f"'letta-ops upgrade --to {plan.to_version} --strategy {strategy} "
                "--rehearse' first (or turn require_rehearsal off)."
            )
        report = UpgradeReport(plan=plan, dry_run=dry_run, outcome="planned")
        if dry_run:
            audit.update(outcome="planned")
            publish_report(profile.name, "upgrade", render_upgrade_markdown(report))
            return report

        with destructive_lock(profile.name, lock_timeout_seconds, database=profile.database):
            if approval:
                try:
                    report.approved_by = await_operator_approval("upgrade", profile.name)
                except ApprovalDeclined:
                    audit.update(outcome="refused")
                    raise
                audit.update(approved_by=report.approved_by)
            backup_report = backup(
                server=server,
                store=store,
                allow_partial_agents=True,
                purpose="pre-upgrade",
                pinned=True,
            )
            object_store = open_backup_store(store, server)
            audit.update(backup_set=backup_report.set, store=object_store)
            manifest = load_manifest(object_store, *backup_report.set.split("/"))
            state = UpgradeState(
                profile=profile,
                store=object_store,
                manifest=manifest,
                old_version=plan.from_version,
                before_agents=agent_inventory(profile.require_database()),
                renames=plan.rename_map() if strategy == "rebuild" else {},
            )
            audit.update(counts_before=counts_summary(manifest.row_counts, state.before_agents))
            report.backup_set = backup_report.set
            report.started_at = datetime.now(UTC)
            state.journal = audit.journal(
                object_store, set_prefix(manifest.server, manifest.set_id)
            )
            state.journal.begin(
                backup_set=backup_report.set,
                from_version=plan.from_version,
                to_version=plan.to_version,
                strategy=strategy,
                reset_mode=plan.reset_mode,
                target_revision=ALEMBIC_HEADS.get(plan.to_version),
            )
            runner = run_migrate if strategy == "migrate" else run_rebuild
            try:
                with transaction() as txn:
                    txn.set("state", state)
                    result = runner(state, plan.to_version, start_timeout_seconds)
            except Exception as exc:
                cause = f"at step {state.step}: {database_error_message(exc)}"
                rolled = state.rollback
                report.outcome = "failed, rolled back" if (rolled or {}).get("ok") else "failed"
                report.error = cause
                report.rollback = rolled
                publish_report(profile.name, "upgrade", render_upgrade_markdown(report))
                if rolled is None or rolled.get("ok"):  # consistent again; else: recover
                    state.journal.finish("failed, rolled back" if rolled else "failed, unchanged")
                audit.update(
                    rollback_outcome=rollback_outcome(rolled),
                    counts_after=server_counts(profile.require_database()) if rolled else None,
                )
                raise UpgradeFailed(
                    f"Upgrade of {profile.name} to {plan.to_version} failed ({cause}); "
                    + (
                        "no rollback was needed: nothing destructive had happened"
                        if rolled is None
                        else f"rollback restored Letta {state.old_version} from {backup_report.set}"
                        if rolled.get("ok")
                        else f"rollback FAILED to restore Letta {state.old_version} "
                        f"({rolled.get('error') or 'counts differ'}): the server may be down; "
                        f"once the cause is fixed run 'letta-ops rollback --to "
                        f"{backup_report.set}'"
                    )
                ) from exc
        state.journal.finish("succeeded")
        report.downtime_seconds = result["downtime_seconds"]
        report.downtime_window = result["downtime_window"]
        report.sequences = result["sequences"]
        report.agents_after = result["agents_after"]
        report.verification = result["verification"]
        report.not_carried = result.get("not_carried")
        report.outcome = "succeeded"
        report.finished_at = datetime.now(UTC)
        audit.update(counts_after=server_counts(profile.require_database()))
        audit.update(downtime_seconds=report.downtime_seconds)  # letta-ops metrics reads it
        publish_report(
            profile.name,
            "upgrade",
            render_upgrade_markdown(report),
            [row.model_dump(mode="json") for row in report.verification],
        )
        logger.info("upgraded %s to %s", profile.name, plan.to_version)
        return report


__all__ = [
    "AgentVerification",
    "LettaVersion",
    "NotCarried",
    "RehearsalRecord",
    "Rename",
    "SequenceRepair",
    "TimedStep",
    "UpgradeFailed",
    "UpgradePlan",
    "UpgradeRefused",
    "UpgradeReport",
    "upgrade",
]
