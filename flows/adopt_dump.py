"""Adopt a ``pg_dump`` made by hand as a backup set of the server, like any set it takes.

The runbook this replaces: "we have a dump from before the upgrade, restore it by hand":
``dropdb``, ``createdb``, ``CREATE EXTENSION vector``, ``pg_restore``, start some Letta version
and hope it is the one the dump was taken with. As one run:

1. read the archive's table of contents (``pg_restore --list``): refused unless it is a
   custom-format archive holding Letta's tables in this server's schema;
2. restore it once into a scratch database (the drill's: beside Letta's, or
   ``LETTA_OPS_DRILL_PG_URI``) to read its alembic revision, the Letta release of that
   revision (refused if none is known), per-table counts and agents; the scratch is dropped;
   with ``dry_run`` stop here;
3. store the file as the dump of a new set (purpose ``adopted``, no agent files), build the
   manifest with the backup's own code, write it authenticated, and verify the set from
   storage with the verify flow: from then on ``rollback --to`` and ``restore`` take it as
   they take any set.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field

from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.postgres.dump import DumpResult
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run, counts_summary
from ..tasks.runs.context import current_flow_run_id, publish_report, run_name
from ..tasks.runs.report import FlowReport
from ..tasks.sets.catalog import write_manifest
from ..tasks.sets.dump_adoption import AdoptedDump, inspect_in_scratch
from ..tasks.sets.manifest import DUMP_NAME, AgentEntry, new_set_id, set_prefix
from ..tasks.store.objects import ObjectStore
from .backup import build_manifest, manifest_lock, set_encryption
from .verify import ObjectProblem, drill_target, refuse_live_drill_target, verify

#: Adopted sets have no agent files: the dump is the whole set.
NO_AGENT_FILE = "adopted dump: no agent file (the dump holds the agent)"


class AdoptionFailed(Failed):
    """The set was written but did not verify."""


class AdoptReport(FlowReport):
    """``adopt_dump()``'s result and ``letta-ops backups adopt --json``."""

    file: str
    server: str
    dry_run: bool
    set: str | None = Field(description="SERVER/SET_ID of the new set (None: dry run).")
    letta_version: str = Field(description="The release whose alembic head the dump holds.")
    alembic_revision: str
    schema_: str = Field(alias="schema", description="The schema holding Letta's tables.")
    postgres_version: str = Field(description="The server version the dump was taken from.")
    tables: int
    rows: int
    agents: int
    dump_bytes: int
    verified: bool | None = Field(description="The set passed verification (None: dry run).")
    verification_problems: list[ObjectProblem]
    restore_warnings: list[str] = Field(description="Expected errors of the scratch restore.")

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)


@task(name="inspect-dump-in-scratch", cache_policy=NO_CACHE)
def inspect_task(profile: ServerProfile, server: str | None, path: Path) -> AdoptedDump:
    target, dedicated = drill_target(server, None)
    if dedicated:
        refuse_live_drill_target(target, server)
    return inspect_in_scratch(profile.require_database(), target, dedicated, path)


@task(name="store-adopted-dump", cache_policy=NO_CACHE)
def store_task(
    profile: ServerProfile,
    store: ObjectStore,
    path: Path,
    adopted: AdoptedDump,
    started: datetime,
    pinned: bool,
) -> str:
    """The file as a set's dump, then the manifest (authenticated) last; returns the set."""
    set_id = new_set_id(started, current_flow_run_id() or "")
    prefix = set_prefix(profile.name, set_id)
    stored = store.put_file(prefix + DUMP_NAME, path)
    dump = DumpResult(
        stored,
        adopted.row_counts,
        adopted.contents.postgres_version,
        None,  # the archive does not say; a restore creates pgvector where the target has it
        _compression(adopted.contents.compression),
    )
    entries = [
        AgentEntry(id=agent_id, name=agent["name"], error=NO_AGENT_FILE)
        for agent_id, agent in sorted(adopted.agents.items())
    ]
    state = {"version": adopted.letta_version, "alembic_revision": adopted.alembic_revision}
    manifest = build_manifest(
        profile,
        set_id,
        prefix,
        started,
        state,
        entries,
        [],
        dump,
        "adopted",
        pinned,
        {},
        manifest_lock(store),
        set_encryption([stored]),
    )
    write_manifest(store, manifest)
    return f"{profile.name}/{set_id}"


def _compression(header: str | None) -> str:
    """pg_restore's ``Compression`` header (``gzip``, ``0``, ``none``...) as a manifest value."""
    if not header or header in {"0", "none"}:
        return "none"
    return header if ":" in header or not header.isdigit() else f"gzip:{header}"


def render_adopt_markdown(report: AdoptReport) -> str:
    head = "plan (nothing stored)" if report.dry_run else f"set {report.set}"
    return "\n".join(
        [
            f"# Adopt {report.file} on {report.server}: {head}",
            "",
            f"- Letta {report.letta_version} (alembic {report.alembic_revision}), schema "
            f"{report.schema_}, from PostgreSQL {report.postgres_version}",
            f"- {report.tables} tables, {report.rows} rows, {report.agents} agents",
            f"- verified: {report.verified}",
        ]
    )


@flow(
    name="letta-adopt-dump",
    timeout_seconds=run_timeouts.VERIFY,
    flow_run_name=run_name("adopt"),
)
def adopt_dump(
    file: str,
    server: str | None = None,
    store: str | None = None,
    pinned: bool = False,
    dry_run: bool = False,
) -> AdoptReport:
    """Make the custom-format ``pg_dump`` at ``file`` a verified set of the server."""
    path = Path(file).expanduser().resolve()
    with audited_run("adopt", server, {"file": str(path), "dry_run": dry_run}) as audit:
        profile = load_profile(server, need_database=True)
        object_store = open_backup_store(store, server)
        audit.update(server=profile.name, store=object_store)
        started = datetime.now(UTC)
        try:
            adopted = inspect_task(profile, server, path)
        except ValueError:
            audit.update(outcome="refused")
            raise
        audit.update(
            versions_from=adopted.letta_version,
            alembic_revision=adopted.alembic_revision,
            counts_before=counts_summary(adopted.row_counts, len(adopted.agents)),
        )
        report = AdoptReport(
            file=str(path),
            server=profile.name,
            dry_run=dry_run,
            set=None,
            letta_version=adopted.letta_version,
            alembic_revision=adopted.alembic_revision,
            schema=adopted.contents.schema,
            postgres_version=adopted.contents.postgres_version,
            tables=len(adopted.row_counts),
            rows=sum(adopted.row_counts.values()),
            agents=len(adopted.agents),
            dump_bytes=path.stat().st_size,
            verified=None,
            verification_problems=[],
            restore_warnings=adopted.restore_warnings,
        )
        if dry_run:
            audit.update(outcome="planned")
            return report
        label = store_task(profile, object_store, path, adopted, started, pinned)
        audit.update(backup_set=label, purpose="adopted")
        report.set = label
        verification = verify(label, server=server, store=store)
        report.verified = verification.ok
        report.verification_problems = verification.problems
        audit.update(verified=verification.ok)
        publish_report(profile.name, "adopt", render_adopt_markdown(report))
        if not verification.ok:
            raise AdoptionFailed(
                f"The dump was stored as {label} but the set failed verification: "
                f"{verification.problems}; it is not offered for restore."
            )
        get_run_logger().info("adopted %s as %s", path, label)
        return report


__all__ = ["AdoptReport", "AdoptionFailed", "adopt_dump"]
