"""Verify a backup set, as an operator would before trusting it:

1. the manifest exists (the set is complete) and names this server;
2. every object matches the manifest: its size and the SHA-256 the store computed at upload,
   asked with one metadata request (S3); objects without one (a local directory, older sets)
   and, with ``read_data``, every object are read back and their sha256 compared;
3. ``pg_restore --list`` reads the dump's table of contents and finds every counted table;
4. with a drill: restore into a scratch database, compare per-table counts, drop it.
The result is stored beside the set (a new object), so retention knows it was verified.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.letta_database import LettaDatabase
from ..blocks.server_profile import ProfileError, load_profile, open_backup_store
from ..tasks.errors import Failed
from ..tasks.postgres.restore_target import same_database
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import RunAudit, audited_run, counts_summary
from ..tasks.runs.context import publish_report, run_name, tag_current_run
from ..tasks.runs.phase_timings import PhaseClock, PhaseTiming, phases_markdown
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.sets.admission import missing_key
from ..tasks.sets.catalog import (
    BackupSetError,
    list_backup_sets,
    load_manifest,
    record_verification,
)
from ..tasks.sets.manifest import (
    BackupManifest,
    SetEncryption,
    parse_set_reference,
    set_prefix,
)
from ..tasks.sets.sqlite_verification import check_sqlite_copy
from ..tasks.sets.verification import check_dump, check_objects, drill, reads_back
from ..tasks.store.encryption import key_ring_of
from ..tasks.store.encryption_keys import EncryptionKeyMissing
from ..tasks.store.objects import ObjectStore


class VerificationFailed(Failed):
    """The set is not what its manifest promises."""


class ObjectProblem(ReportPart):
    object: str = Field(description="The object's key in the store.")
    problem: str = Field(description="What is wrong with it (missing, size, checksum, ...).")


class ObjectsChecked(ReportPart):
    by_store_checksum: int = Field(description="Objects proven by the store's own checksum.")
    read_back: int = Field(description="Objects read back and hashed here.")
    bytes_read_back: int = Field(description="Stored bytes those reads cost.")


class DumpCheck(ReportPart):
    toc_entries: int = Field(description="Entries in the dump's table of contents.")
    tables_with_data: int = Field(description="Tables whose rows the dump holds.")
    tables_missing: list[str] = Field(description="Counted tables the dump lacks.")
    bytes_read: int = Field(description="Bytes of the dump read to get its TOC.")


class CountDifference(ReportPart):
    table: str
    expected: int | None = Field(description="Rows the manifest counted (None: not counted).")
    actual: int | None = Field(description="Rows found (None: table absent).")


class SqliteCopyCheck(ReportPart):
    integrity: list[str] = Field(description="PRAGMA integrity_check on the stored copy.")
    tables: int = Field(description="Tables counted in the copy.")
    tables_missing: list[str] = Field(description="Counted tables the copy lacks.")
    count_differences: list[CountDifference] = Field(
        description="Tables whose count in the copy differs from the manifest's."
    )
    bytes_read: int = Field(description="Bytes of the copy downloaded.")


class DrillResult(ReportPart):
    scratch_database: str = Field(description="Where the set was restored.")
    in_place: bool = Field(description="Restored into the given database, not a new one.")
    tables: int = Field(description="Tables whose rows were counted after the restore.")
    differences: list[CountDifference] = Field(description="Tables whose count differs.")
    restore_warnings: list[str] = Field(description="What pg_restore warned about.")


class VerifiedEncryption(SetEncryption):
    decrypted: bool = Field(description="The key was at hand: the dump was decrypted and read.")


class VerifyReport(FlowReport):
    """``verify()``'s result and ``letta-ops verify --json``; also stored beside the set."""

    ok: bool = Field(description="Every check passed.")
    set: str = Field(description="SERVER/SET_ID.")
    drill: bool = Field(description="A restore drill was asked for.")
    checked_at: datetime = Field(description="When the checks ended.")
    objects: int = Field(description="Objects the manifest lists.")
    read_data: bool = Field(description="Every object was read back (--read-data).")
    checked: ObjectsChecked
    problems: list[ObjectProblem]
    dump: DumpCheck | None = Field(description="The dump's TOC check (None: not reached).")
    sqlite_copy: SqliteCopyCheck | None = Field(
        default=None,
        description="A SQLite set's copy, downloaded, integrity-checked and counted (None: "
        "a PostgreSQL set, or not reached).",
    )
    drill_result: DrillResult | None = Field(description="The drill (None: not asked).")
    encryption: VerifiedEncryption | None = Field(description="None: not encrypted.")
    phases: list[PhaseTiming] = Field(
        default_factory=list,
        description="Each phase's start and seconds, in order of start (a drill's too); "
        "the copy stored beside the set has them up to its own writing.",
    )


def objects_read(manifest: BackupManifest, read_data: bool) -> dict[str, int]:
    """How the objects were checked: by the store's checksum, or read back (and bytes)."""
    back = [o for o in manifest.objects.values() if reads_back(o, read_data)]
    return {
        "by_store_checksum": len(manifest.objects) - len(back),
        "read_back": len(back),
        "bytes_read_back": sum(o.stored_bytes for o in back),
    }


def sqlite_drill(check: dict) -> dict:
    """A SQLite set's drill: its copy opened and every table counted -- what the copy check
    did, so the drill reports that read rather than downloading the copy again."""
    return {
        "scratch_database": "the downloaded copy (opened read-only, then deleted)",
        "in_place": False,
        "tables": check["tables"],
        "differences": check["count_differences"],
        "restore_warnings": [],
    }


@task(name="restore-drill", cache_policy=NO_CACHE)
def drill_task(
    store: ObjectStore,
    manifest: BackupManifest,
    target: LettaDatabase,
    dedicated: bool,
    clock: PhaseClock | None = None,
) -> dict:
    return drill(store, manifest, target, dedicated=dedicated, phase=(clock or PhaseClock()).phase)


def dump_ok(dump: dict | None) -> bool:
    return dump is not None and not dump["tables_missing"]


def sqlite_copy_ok(check: dict | None) -> bool:
    """SQLite read every page (``ok``), found every counted table, and counted the same."""
    return (
        check is not None
        and check["integrity"] == ["ok"]
        and not check["tables_missing"]
        and not check["count_differences"]
    )


def drill_target(server: str | None, drill_database: str | None) -> tuple[LettaDatabase, bool]:
    """Where to restore a drill, and whether that database is dedicated to drills: a saved
    Letta Database block or LETTA_OPS_DRILL_PG_URI (dedicated: a role that cannot create
    databases drills in it, in place), else the server's own PostgreSQL (a scratch database
    beside Letta's; Letta's is never touched)."""
    if drill_database:
        return LettaDatabase.load(drill_database), True
    if os.environ.get("LETTA_OPS_DRILL_PG_URI"):
        env = {"LETTA_PG_URI": os.environ["LETTA_OPS_DRILL_PG_URI"]}
        if os.environ.get("LETTA_OPS_PG_BIN"):
            env["LETTA_OPS_PG_BIN"] = os.environ["LETTA_OPS_PG_BIN"]
        return LettaDatabase.from_env(env), True
    profile = load_profile(server, need_database=False)
    if profile.database is None:
        raise ProfileError(
            "A drill needs a PostgreSQL server to restore into; set LETTA_PG_URI or "
            "LETTA_OPS_DRILL_PG_URI, or pass --drill-database with a saved block name."
        )
    return profile.database, False


def refuse_live_drill_target(target: LettaDatabase, server: str | None) -> None:
    """A database dedicated to drills is emptied by them: it must never be Letta's own."""
    live = load_profile(server, need_database=False).database
    if live is not None and same_database(target, live):
        raise ProfileError(
            f"The drill database {target.redacted_uri()} is the live database of this server; "
            "a drill empties its target, so point LETTA_OPS_DRILL_PG_URI (or --drill-database) "
            "at a database of its own."
        )


def resolve_set(store: ObjectStore, reference: str, default_server: str | None) -> tuple[str, str]:
    """``SERVER/SET_ID``, ``SET_ID``, or ``latest`` / ``SERVER/latest``: the newest complete
    set that authenticates and whose newest verification did not fail."""
    ref = reference.strip().strip("/") or "latest"
    server_part, _, last = ref.rpartition("/")
    if last == "latest":
        server_name = server_part or default_server
        candidates = [
            s
            for s in list_backup_sets(store, server_name)
            if s.complete and s.believed and s.verification != "failed"
        ]
        if not candidates:
            raise BackupSetError(
                f"There is no complete, trusted backup set of {server_name!r} in "
                f"{store.describe()} that has not failed verification; run 'letta-ops backup' "
                "first (see 'letta-ops backups list')."
            )
        return candidates[0].server, candidates[0].set_id
    return parse_set_reference(ref, default_server)


def render_verify_markdown(result: VerifyReport) -> str:
    checked = result.checked
    lines = [
        f"# Verify {result.set}: {'passed' if result.ok else 'FAILED'}",
        "",
        f"- objects checked: {result.objects} ({checked.by_store_checksum} by the "
        f"store's checksum, {checked.read_back} read back: "
        f"{checked.bytes_read_back} bytes)",
    ]
    lines += [f"- **{p.object}**: {p.problem}" for p in result.problems]
    encryption = result.encryption
    if encryption:
        lines.append(
            f"- encrypted ({encryption.scheme}, key id `{encryption.key_id}`): "
            + (
                "decrypted and authenticated"
                if encryption.decrypted
                else "stored objects checked without the key; the dump's table of contents "
                "was not read"
            )
        )
    if result.dump:
        lines.append(
            f"- dump: {result.dump.toc_entries} TOC entries, "
            f"{result.dump.tables_with_data} tables with data"
        )
    if result.sqlite_copy:
        copy = result.sqlite_copy
        lines.append(
            f"- SQLite copy: integrity_check {', '.join(copy.integrity)}, {copy.tables} tables "
            f"counted, {len(copy.count_differences)} count differences"
        )
    if result.drill_result:
        d = result.drill_result
        lines.append(
            f"- drill: restored {d.tables} tables into {d.scratch_database}; "
            f"{len(d.differences)} count differences"
        )
        lines += [
            f"  - {x.table}: manifest {x.expected}, restored {x.actual}" for x in d.differences
        ]
    lines += phases_markdown(result.phases)
    return "\n".join(lines)


def check_stored_set(
    object_store: ObjectStore,
    manifest: BackupManifest,
    read_data: bool,
    clock: PhaseClock,
    key_needed: bool = False,
) -> tuple[list[dict], dict | None, dict | None, str | None]:
    """The checks of a set in storage: every object, then the dump's table of contents (or
    a SQLite set's copy). Returns the problems, the dump check, the SQLite copy check and why
    the set cannot be decrypted (None: it can, or it is not encrypted).

    Without any key the stored objects are still checked (checksums need no key); when the
    key is needed (a drill), or a key ring lacks the set's key, that is refused in one
    sentence."""
    key_problem = missing_key(object_store, manifest)
    if key_problem and (key_needed or key_ring_of(object_store)):
        raise EncryptionKeyMissing(key_problem)
    with clock.phase("objects"):
        problems = check_objects(object_store, manifest, read_data=read_data)
    dump = sqlite_copy = None
    if not problems and not key_problem and manifest.engine == "sqlite":
        with clock.phase("sqlite copy"):
            sqlite_copy = check_sqlite_copy(object_store, manifest)
    elif not problems and not key_problem:
        with clock.phase("dump TOC"):
            dump = check_dump(object_store, manifest)
    return problems, dump, sqlite_copy, key_problem


def verify_report(
    set_name: str,
    manifest: BackupManifest,
    read_data: bool,
    drill: bool,
    problems: list[dict],
    dump: dict | None,
    sqlite_copy: dict | None,
    drill_result: dict | None,
    key_problem: str | None,
) -> VerifyReport:
    """What the checks found, and whether the set passed them all."""
    on_sqlite = manifest.engine == "sqlite"
    checked_database = sqlite_copy_ok(sqlite_copy) if on_sqlite else dump_ok(dump)
    ok = (
        not problems
        and (key_problem is not None or checked_database)
        and (drill_result is None or not drill_result["differences"])
        and not (drill and on_sqlite and drill_result is None)
    )
    return VerifyReport(
        ok=ok,
        set=set_name,
        drill=drill,
        checked_at=datetime.now(UTC),
        objects=len(manifest.objects),
        read_data=read_data,
        checked=objects_read(manifest, read_data),
        problems=problems,
        dump=dump,
        sqlite_copy=sqlite_copy,
        drill_result=drill_result,
        encryption=(
            {**manifest.encryption.model_dump(), "decrypted": key_problem is None}
            if manifest.encryption
            else None
        ),
    )


def conclude(
    object_store: ObjectStore,
    server_name: str,
    set_id: str,
    manifest: BackupManifest,
    result: VerifyReport,
    audit: RunAudit,
    clock: PhaseClock,
) -> None:
    """Store the result beside the set, record it in the audit, publish the report; raise
    :class:`VerificationFailed` when the set failed."""
    result.phases = clock.timings()
    with clock.phase("record"):
        record_verification(
            object_store, set_prefix(server_name, set_id), result.model_dump(mode="json")
        )
    drill_result = result.drill_result
    audit.update(
        verified=result.ok,
        problems=len(result.problems),
        counts_after=(
            {
                "tables": drill_result.tables,
                "differences": [d.model_dump() for d in drill_result.differences],
            }
            if drill_result
            else None
        ),
    )
    with clock.phase("report"):
        publish_report(server_name, "verify", render_verify_markdown(result))
    result.phases = clock.timings()
    if not result.ok:
        named = ", ".join(f"{p.object} ({p.problem})" for p in result.problems)
        on_sqlite = manifest.engine == "sqlite"
        raise VerificationFailed(
            f"Backup set {result.set} failed verification: "
            + (
                named
                or (
                    f"count differences {[d.model_dump() for d in drill_result.differences]}"
                    if drill_result and drill_result.differences
                    else "database check "
                    + str(
                        (result.sqlite_copy if on_sqlite else result.dump).model_dump()
                        if (result.sqlite_copy if on_sqlite else result.dump)
                        else None
                    )
                )
            )
        )


def verify_written_set(
    object_store: ObjectStore, server: str, set_id: str, parameters: dict
) -> VerifyReport:
    """A backup's own verification, as a step of the backup's run rather than a flow run of
    its own (a subflow cost a flow run's bookkeeping, its tags, and the server's blocks and
    store loaded again: seconds of every backup, issue #32). The proof is the same as
    ``verify``'s: the manifest read back from storage and authenticated, every object
    checked there, the dump's table of contents read from the stored dump; the result is
    stored beside the set, published, and audited as a ``verify`` record, a child of the run.
    """
    clock = PhaseClock()
    with audited_run("verify", server, parameters, store=object_store, step_of_run=True) as audit:
        audit.update(backup_set=f"{server}/{set_id}")
        with clock.phase("manifest"):
            manifest = load_manifest(object_store, server, set_id)
        audit.update(
            versions_from=manifest.letta_version,
            counts_before=counts_summary(manifest.row_counts, len(manifest.agents)),
        )
        problems, dump, sqlite_copy, key_problem = check_stored_set(
            object_store, manifest, read_data=False, clock=clock
        )
        result = verify_report(
            f"{server}/{set_id}",
            manifest,
            False,
            False,
            problems,
            dump,
            sqlite_copy,
            None,
            key_problem,
        )
        conclude(object_store, server, set_id, manifest, result, audit, clock)
    get_run_logger().info("backup set %s verified", result.set)
    return result


@flow(
    name="letta-verify",
    flow_run_name=run_name("verify", "backup_set"),
    timeout_seconds=run_timeouts.VERIFY,
)
def verify(
    backup_set: str,
    server: str | None = None,
    store: str | None = None,
    drill: bool = False,
    drill_database: str | None = None,
    read_data: bool = False,
    allow_legacy: bool = False,
) -> VerifyReport:
    """Verify ``backup_set``: ``SERVER/SET_ID``, a SET_ID of the current server, or
    ``latest`` (the newest complete set).

    ``read_data`` (restic's ``--read-data``) reads every object back and compares its
    sha256, for when the store's own checksums are not trusted; without it an object whose
    store checksum the manifest recorded costs one metadata request. ``allow_legacy`` lets it
    check a set written before sets were authenticated."""
    clock = PhaseClock()
    with contextlib.ExitStack() as run:
        with clock.phase("start-up"):
            audit = run.enter_context(audited_run("drill" if drill else "verify", server))
            logger = get_run_logger()
            default_server = load_profile(server).name if "/" not in backup_set else None
            object_store = open_backup_store(store, server)
        with clock.phase("manifest"):
            server_name, set_id = resolve_set(object_store, backup_set, default_server)
            audit.update(
                server=server_name, backup_set=f"{server_name}/{set_id}", store=object_store
            )
            tag_current_run(server_name, "verify")
            manifest = load_manifest(object_store, server_name, set_id, allow_legacy)
        audit.update(
            versions_from=manifest.letta_version,
            counts_before=counts_summary(manifest.row_counts, len(manifest.agents)),
        )

        problems, dump, sqlite_copy, key_problem = check_stored_set(
            object_store, manifest, read_data, clock, key_needed=drill
        )
        on_sqlite = manifest.engine == "sqlite"
        drill_result = None
        if drill and on_sqlite and sqlite_copy is not None:
            drill_result = sqlite_drill(sqlite_copy)
        elif drill and not problems and not on_sqlite:
            with clock.phase("drill"):
                target, dedicated = drill_target(server, drill_database)
                if dedicated:
                    refuse_live_drill_target(target, server)
                drill_result = drill_task(object_store, manifest, target, dedicated, clock)
        result = verify_report(
            f"{server_name}/{set_id}",
            manifest,
            read_data,
            drill,
            problems,
            dump,
            sqlite_copy,
            drill_result,
            key_problem,
        )
        conclude(object_store, server_name, set_id, manifest, result, audit, clock)
        logger.info(
            "backup set %s verified%s", result.set, " with a restore drill" if drill else ""
        )
        return result
