"""``letta-ops doctor``: one report of everything that broke these servers before.

The runbook this replaces, as one run (read-only; nothing is changed):

1. the configuration: ``LETTA_PG_URI`` set and not a placeholder, for letta-ops and for the
   running server, and both on the same database;
2. the server: healthy, its version; its HOME / LETTA_DIR writable; ``LETTA_ENCRYPTION_KEY``
   set on >= 0.12; the compose file (if given) pinned to a release;
3. the database: alembic revision equals the head of the running version; pgvector installed;
   ``messages.sequence_id`` has its default and every sequence is past its maximum; free disk
   for a dump;
4. the backups: the newest verified set is recent enough; the bucket has Object Lock (and
   a default retention) and new sets are locked; the credentials in use can or cannot
   delete (a probe that deletes a random key that does not exist); and the server refuses
   ``GET /v1/agents/`` without credentials (or was declared open);
5. publish the findings, each with a one-line fix (a table, and the ``--json`` report as the
   artifact ``doctor-<server>-json`` for scripts that read runs, not shells). ``needs_action``
   is true when any finding needs an operator (the command line exits 3).
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ..blocks.letta_database import LettaDatabase
from ..blocks.letta_server import LettaServer
from ..blocks.process_runtime import LettaProcessRuntime
from ..blocks.server_profile import ServerProfile, load_profile, open_backup_store
from ..tasks.doctor import access_checks, checks
from ..tasks.doctor.check_names import CHECK_NAMES
from ..tasks.doctor.findings import Finding, Status, action, guarded, skipped
from ..tasks.errors import NeedsAction, Refused
from ..tasks.letta.api import LettaAPIError, LettaClient
from ..tasks.runs import timeouts as run_timeouts
from ..tasks.runs.audit_record import audited_run
from ..tasks.runs.context import (
    publish_json_report,
    publish_report,
    run_name,
    tag_current_run,
)
from ..tasks.runs.report import FlowReport, ReportPart
from ..tasks.store.encryption import current_key_id, key_ring_of
from ..tasks.store.encryption_keys import EncryptionKeyMissing


class DoctorFinding(ReportPart):
    """One check's verdict."""

    check: str = Field(description="The check's name (see --ignore).")
    status: Status = Field(description="ok, action (an operator must act) or skipped.")
    detail: str = Field(description="What the check found.")
    fix: str | None = Field(description="The one-line fix (for an action).")


class DoctorReport(FlowReport):
    """``doctor()``'s result and ``letta-ops doctor --json``."""

    server: str
    base_url: str
    version: str | None = Field(description="The running Letta version (None: no answer).")
    needs_action: bool = Field(description="A finding not ignored needs an operator (exit 3).")
    findings: list[DoctorFinding] = Field(description="Every check, in the documented order.")
    ignored: list[str] = Field(description="Checks the operator accepted (still reported).")


class ServerNeedsAction(NeedsAction):
    """Raised (when asked to) so a scheduled doctor's run turns red and notifications fire."""

    def __init__(self, message: str, report: DoctorReport) -> None:
        super().__init__(message)
        self.report = report


def load_profile_for_doctor(server: str | None) -> tuple[ServerProfile, str | None]:
    """The profile, even when its database settings are broken (that is a finding, not a
    crash): returns the profile without a database and the one-sentence reason."""
    try:
        return load_profile(server, need_database=True), None
    except ValueError as exc:  # InvalidDatabaseURI, ProfileError, pydantic's ValidationError
        reason = str(exc).strip().splitlines()[0]
        if server:
            try:
                return load_profile(server, need_database=False), reason
            except ValueError:
                raise exc from None  # the saved server itself is missing: bad input
    letta = LettaServer.from_env()
    return ServerProfile(letta, None, LettaProcessRuntime.from_env(letta.server_name)), reason


@task(name="check-server", cache_policy=NO_CACHE)
def check_server(
    profile: ServerProfile,
    config_error: str | None,
    compose_file: Path | None,
    compose_service: str,
) -> tuple[list[Finding], str | None]:
    """Health, version, and what the server process sees (URI, HOME, encryption key)."""
    health, error = None, None
    with LettaClient(profile.server, timeout=10, retries=1) as client:
        try:
            health = client.health()
        except LettaAPIError as exc:
            error = exc.detail
    version = (health or {}).get("version")
    server_env = profile.runtime.server_environment()
    compose_text = compose_file.read_text() if compose_file and compose_file.exists() else None
    runtime_names = profile.runtime.configured_variables() or set()
    if health is None:
        refused, auth_error = None, error
    else:
        refused, auth_error = access_checks.anonymous_access_refused(profile.server.base_url)
    open_by_choice = bool(getattr(profile.runtime, "open_server", False)) or os.environ.get(
        "LETTA_OPS_OPEN_SERVER", ""
    ).lower() in {"1", "true"}
    findings = [
        checks.check_health(health, error, profile.server.base_url),
        access_checks.check_server_auth(
            refused,
            auth_error,
            profile.server.base_url,
            password_configured=profile.server.password is not None,
            open_by_choice=open_by_choice,
        ),
        *guarded(
            "database-uri",
            lambda: checks.check_database_uri(
                profile.database, config_error, server_env, compose_text
            ),
        ),
        *guarded(
            "home-writable",
            lambda: checks.check_home_writable(server_env, profile.runtime.server_home()),
        ),
        *guarded(
            "encryption-key",
            lambda: checks.check_encryption_key(
                version,
                checks.encryption_key_sources(server_env, runtime_names, compose_text),
            ),
        ),
        *guarded("compose-pin", lambda: checks.check_compose_pin(compose_file, compose_service)),
    ]
    return findings, version


@task(name="check-database", cache_policy=NO_CACHE)
def check_database(db: LettaDatabase | None, version: str | None) -> list[Finding]:
    """Schema revision, pgvector, sequences and room for a dump."""
    names = ("alembic", "pgvector", "pg-tools", "database-tls", "sequences", "dump-space")
    if db is None:
        reason = "no usable database configuration (see database-uri)"
        return [skipped(n, reason) for n in names]
    from ..tasks.doctor.tls import check_database_tls
    from ..tasks.postgres.letta_inventory import database_size
    from ..tasks.postgres.letta_schema import alembic_revision
    from ..tasks.postgres.sequence_repair import sequence_health

    return [
        *guarded("alembic", lambda: checks.check_alembic(alembic_revision(db), version)),
        *guarded("pgvector", lambda: checks.check_pgvector(checks.pgvector_version(db))),
        *guarded("pg-tools", lambda: checks.check_pg_tools(db)),
        *guarded("database-tls", lambda: check_database_tls(db)),
        *guarded("restore-privileges", lambda: checks.check_restore_privileges(db)),
        *guarded("sequences", lambda: checks.check_sequences(sequence_health(db))),
        *guarded(
            "dump-space",
            lambda: checks.check_dump_space(database_size(db), checks.dump_directory()),
        ),
    ]


#: The PostgreSQL checks a SQLite server has nothing for.
POSTGRES_CHECKS = (
    "database-uri",
    "alembic",
    "pgvector",
    "pg-tools",
    "database-tls",
    "restore-privileges",
    "sequences",
    "dump-space",
)


def check_sqlite(profile: ServerProfile, version: str | None) -> list[Finding]:
    """A SQLite server's file, side files and version, in place of the PostgreSQL checks."""
    from ..tasks.doctor import sqlite_checks

    sqlite = profile.sqlite
    assert sqlite is not None
    running = version is not None or bool(profile.runtime.status().get("running"))
    reason = f"a SQLite server ({sqlite.path}): no PostgreSQL to check"
    return [
        *guarded("sqlite-file", lambda: sqlite_checks.check_sqlite_file(sqlite)),
        *guarded("sqlite-wal", lambda: sqlite_checks.check_sqlite_side_files(sqlite, running)),
        sqlite_checks.check_sqlite_version(version),
        *[skipped(name, reason) for name in POSTGRES_CHECKS],
    ]


def check_agent_names(profile: ServerProfile, version: str | None) -> Finding:
    from ..tasks.letta.agent_names import name_rule_for, plan_renames

    if version is None:
        return checks.check_agent_names({}, None)
    with LettaClient(profile.server, timeout=30, retries=1) as client:
        agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
    return checks.check_agent_names(plan_renames(agents, name_rule_for(version)), version)


def check_interrupted(server_name: str, server: str | None) -> Finding:
    """Runs of this server that died part way (journal begun, never finished, process gone)."""
    from ..tasks.runs.journal import last_step
    from .recover import interrupted_runs

    runs = [
        {
            "run_id": journal[0].run_id,
            "operation": journal[0].operation,
            "step": last_step(journal)[0],
            "why": why,
        }
        for journal, why in interrupted_runs(server_name)
    ]
    return checks.check_interrupted_runs(runs, f" --server {server}" if server else "")


@task(name="check-backups", cache_policy=NO_CACHE)
def check_backups(
    server_name: str, store: str | None, server: str | None, max_age_hours: float
) -> list[Finding]:
    try:
        object_store = open_backup_store(store, server)
    except EncryptionKeyMissing as exc:  # the store is there; its key configuration is not
        sentence = str(exc).strip().splitlines()[0]
        return [
            action("backup-encryption", sentence, "Fix the key configuration named."),
            skipped("backup-age", "the store's encryption keys are unusable"),
        ]
    except ValueError as exc:
        return [
            action(
                "backup-age",
                str(exc).strip().splitlines()[0],
                "Set LETTA_OPS_STORE (or pass --store) and schedule the nightly-backup deployment.",
            )
        ]
    ring = key_ring_of(object_store)
    return [
        *guarded(
            "backup-age",
            lambda: checks.check_backup_age(
                checks.newest_verified_backup(object_store, server_name),
                datetime.now(UTC),
                max_age_hours,
                object_store.describe(),
            ),
        ),
        checks.check_backup_encryption(
            object_store.describe(), current_key_id(object_store), len(ring.keys)
        ),
        *guarded(
            "backup-authentication",
            lambda: checks.check_backup_authentication(object_store, server_name),
        ),
    ]


@task(name="check-store-protection", cache_policy=NO_CACHE)
def check_store_protection(store: str | None, server: str | None) -> list[Finding]:
    """Can the store keep sets immutable (Object Lock), and can these credentials delete?

    The delete probe deletes a random key that does not exist (see
    :meth:`S3ObjectStore.probe_delete`): nothing real is ever deleted.
    """
    try:
        object_store = open_backup_store(store, server)
    except ValueError as exc:
        reason = f"no usable backup store ({str(exc).strip().splitlines()[0]})"
        return [skipped("backup-lock", reason), skipped("backup-delete", reason)]
    where = object_store.describe()
    bucket_lock = None
    findings = guarded("backup-lock", lambda: _lock_finding(object_store))
    with contextlib.suppress(Exception):  # the finding above already says why
        bucket_lock = object_store.bucket_lock()
    probe = getattr(object_store, "probe_delete", None)  # S3 only
    try:
        requested = access_checks.requested_object_lock(object_store)
    except ValueError:  # a bad LETTA_OPS_LOCK_DAYS: backup-lock says so
        requested = None
    sets_locked = bool(
        bucket_lock and bucket_lock.enabled and (bucket_lock.default_mode or requested)
    )
    findings += guarded(
        "backup-delete",
        lambda: access_checks.check_backup_delete(probe() if probe else None, sets_locked, where),
    )
    return findings


def _lock_finding(object_store: Any) -> Finding:
    return access_checks.check_backup_lock(
        object_store.bucket_lock(),
        access_checks.requested_object_lock(object_store),
        object_store.describe(),
    )


def render_doctor_markdown(report: DoctorReport) -> str:
    verdict = "needs action" if report.needs_action else "all well"
    lines = [
        f"# Doctor: {report.server} (Letta {report.version or 'unknown'}): **{verdict}**",
        "",
        "| check | status | finding | fix |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.check} | {f.status} | {f.detail} | {f.fix or ''} |" for f in report.findings]
    if report.ignored:
        lines += ["", f"Ignored by the operator: {', '.join(report.ignored)}"]
    return "\n".join(lines)


@flow(name="letta-doctor", flow_run_name=run_name("doctor"), timeout_seconds=run_timeouts.DOCTOR)
def doctor(
    server: str | None = None,
    store: str | None = None,
    compose_file: str | None = None,
    compose_service: str = "letta_server",
    max_backup_age_hours: float = 26.0,
    ignore: list[str] | None = None,
    fail_on_action: bool = False,
) -> DoctorReport:
    """Check one server; ``ignore`` lists checks the operator has accepted (still reported,
    never counted as needing action). With ``fail_on_action`` (the scheduled deployment) a
    finding that needs action fails the run, after the report is published."""
    with audited_run("doctor", server) as audit:
        unknown = sorted(set(ignore or ()) - set(CHECK_NAMES))
        if unknown:
            raise Refused(
                f"Unknown check(s) to ignore: {', '.join(unknown)}; known: "
                f"{', '.join(CHECK_NAMES)}."
            )
        profile, config_error = load_profile_for_doctor(server)
        audit.update(server=profile.name)
        tag_current_run(profile.name, "doctor")
        compose = Path(compose_file) if compose_file else None
        if compose is not None and not compose.is_file():
            raise Refused(
                f"Compose file {compose} does not exist; pass an existing --compose-file."
            )

        if compose is None and getattr(profile.runtime, "compose_file", None):
            compose = Path(profile.runtime.compose_file)
            compose_service = profile.runtime.service
        server_findings, version = check_server(profile, config_error, compose, compose_service)
        if profile.sqlite is not None:
            server_findings = [f for f in server_findings if f.check != "database-uri"]
            database_findings = check_sqlite(profile, version)
        else:
            database_findings = check_database(profile.database, version)
        findings = [
            *server_findings,
            *guarded("runtime", lambda: checks.check_runtime(profile.runtime)),
            *database_findings,
            *guarded("interrupted-run", lambda: check_interrupted(profile.name, server)),
            *guarded("agent-names", lambda: check_agent_names(profile, version)),
            *check_backups(profile.name, store, server, max_backup_age_hours),
            *check_store_protection(store, server),
        ]
        order = {name: i for i, name in enumerate(CHECK_NAMES)}
        findings.sort(key=lambda f: order.get(f.check, len(order)))
        ignored = sorted(set(ignore or ()))
        counted = [f for f in findings if f.check not in ignored]
        report = DoctorReport(
            server=profile.name,
            base_url=profile.server.base_url,
            version=version,
            needs_action=checks.needs_action(counted),
            findings=[f.to_dict() for f in findings],
            ignored=ignored,
        )
        publish_report(
            profile.name,
            "doctor",
            render_doctor_markdown(report),
            [f.to_dict() for f in findings],
        )
        publish_json_report(profile.name, "doctor", report)
        audit.update(
            versions_from=version,
            needs_action=report.needs_action,
            actions=[f.check for f in counted if f.status == "action"],
        )
        if fail_on_action and report.needs_action:
            first = next(f for f in counted if f.status == "action")
            raise ServerNeedsAction(
                f"{profile.name} needs action on {first.check}: {first.detail}. Fix: {first.fix}",
                report,
            )
        return report
