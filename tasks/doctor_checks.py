"""``letta-ops doctor``: one check per thing that has broken these servers before.

Why this list: each check is an incident from the operators' notes. A ``latest`` tag moved a
server across a schema break (compose pin, alembic head); a database without pgvector or
without ``messages.sequence_id``'s default failed every insert; a server without an explicit
``LETTA_PG_URI`` talked to the wrong database; a hosted deploy died on a read-only HOME; a
dump failed for lack of disk; nobody noticed the nightly backup had stopped.

Every check returns a :class:`Finding` with a one-line fix. A check that cannot run because
something it needs is missing says ``skipped`` and names what (the missing thing is its own
finding). Secrets never leave this module: the server process's environment is read for
*names* and parsed URI parts only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from letta_ops.blocks.letta_database import InvalidDatabaseURI, LettaDatabase, parse_letta_pg_uri
from letta_ops.tasks.letta_postgres import connect, database_error_message
from letta_ops.tasks.letta_versions import (
    ALEMBIC_HEADS,
    LettaVersion,
    parse_server_version,
    release_at_revision,
)

Status = Literal["ok", "action", "skipped"]

#: Version from which some columns are encrypted with ``LETTA_ENCRYPTION_KEY``.
ENCRYPTION_FROM = LettaVersion("0.12.0")
#: A dump and its restore need about twice the database's size (as the upgrade's pre-flight).
DUMP_SPACE_FACTOR = 2


@dataclass
class Finding:
    """One check's verdict: ``action`` means an operator must do ``fix``."""

    check: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def action(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "action", detail, fix)


def skipped(check: str, detail: str) -> Finding:
    return Finding(check, "skipped", detail)


def guarded(check: str, run: Callable[[], Finding | list[Finding]]) -> list[Finding]:
    """Run one check; an unexpected failure is itself a finding, never a crash of the report."""
    try:
        result = run()
    except Exception as exc:  # the doctor reports on broken servers: expect anything
        first = database_error_message(exc)
        return [action(check, f"the check failed: {first}", "Fix the error above and rerun.")]
    return result if isinstance(result, list) else [result]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def check_health(health: dict | None, error: str | None, base_url: str) -> Finding:
    if health is None:
        return action(
            "health",
            f"{base_url} did not answer /v1/health/: {error}",
            "Start the server ('letta-ops runtime start --version X.Y.Z') or fix LETTA_BASE_URL.",
        )
    if health.get("status") != "ok":
        return action(
            "health",
            f"{base_url} reports status {health.get('status')!r}",
            "Read the server's log and restart it.",
        )
    return ok("health", f"{base_url} is healthy, Letta {health.get('version')}")


def check_alembic(revision: str | None, version: str | None) -> Finding:
    if version is None:
        release = release_at_revision(revision)
        if release is None:
            return skipped("alembic", "the server's version is unknown (see health)")
        return action(
            "alembic",
            f"the server does not answer; the database is at Letta {release}'s schema "
            f"(alembic revision {revision})",
            f"Start that version: 'letta-ops runtime start --version {release}' (after an "
            "interrupted upgrade or rollback: 'letta-ops recover').",
        )
    if revision is None:
        return action(
            "alembic",
            "the database has no alembic_version table: Letta's migrations never ran on it",
            f"Run 'letta-ops runtime migrate --version {version}'.",
        )
    expected = ALEMBIC_HEADS.get(version)
    if expected is None:
        return ok("alembic", f"revision {revision} (no known head for Letta {version})")
    if revision != expected:
        return action(
            "alembic",
            f"revision {revision}, but Letta {version}'s head is {expected}: the schema does "
            "not match the running server",
            f"Run 'letta-ops runtime migrate --version {version}' (after a backup).",
        )
    return ok("alembic", f"revision {revision} is Letta {version}'s head")


def check_pgvector(extension_version: str | None) -> Finding:
    if extension_version is None:
        return action(
            "pgvector",
            "the pgvector extension is not installed in Letta's database",
            "As a superuser: CREATE EXTENSION vector; (in Letta's database).",
        )
    return ok("pgvector", f"pgvector {extension_version} installed")


def check_restore_privileges(db: LettaDatabase) -> Finding:
    """The pre-flight every destructive run makes: may this role empty the database and
    restore into it (recreate, or reset in place), with client tools that fit the server?"""
    from letta_ops.tasks.errors import Refused  # privileges, or what depends on Letta's tables
    from letta_ops.tasks.postgres_privileges import restore_plan

    try:
        plan = restore_plan(db)
    except Refused as exc:
        return action(
            "restore-privileges",
            "upgrade, rollback and restore would be refused before stopping anything",
            str(exc),
        )
    how = (
        "drop and recreate the database"
        if plan["reset_mode"] == "recreate"
        else "reset Letta's schema in place (database and pgvector kept)"
    )
    drills = "a scratch database" if plan["scratch_databases"] else "LETTA_OPS_DRILL_PG_URI"
    return ok(
        "restore-privileges",
        f"role {plan['role']} on PostgreSQL {plan['server_major']} can {how} and restore; "
        f"drills need {drills}",
    )


def check_interrupted_runs(runs: list[dict], server_option: str) -> Finding:
    """Destructive runs that died part way: the server may be down or half changed."""
    if not runs:
        return ok("interrupted-run", "no interrupted upgrade, rollback or restore")
    newest = runs[0]
    return action(
        "interrupted-run",
        f"{len(runs)} interrupted destructive run(s); the newest, {newest['run_id']} "
        f"({newest['operation']}), stopped at '{newest['step']}' ({newest['why']})",
        f"Run 'letta-ops recover{server_option}' (see what it would do with --dry-run).",
    )


def check_agent_names(renames: dict[str, dict[str, str]], version: str | None) -> Finding:
    """Agents whose names the running version refuses: it cannot export them (500)."""
    if version is None:
        return skipped("agent-names", "the server's version is unknown (see health)")
    if not renames:
        return ok("agent-names", f"every agent's name is valid for Letta {version}")
    names = ", ".join(repr(c["old"]) for c in list(renames.values())[:5])
    return action(
        "agent-names",
        f"{len(renames)} agent(s) have names Letta {version} refuses, so it cannot export them "
        f"and backups have no agent file for them: {names}",
        "Run 'letta-ops rename-agents --sanitize' to see the new names, then with --execute.",
    )


def pgvector_version(db: LettaDatabase) -> str | None:
    with connect(db) as conn:
        return conn.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()


def _same_database(a: dict, b: dict) -> bool:
    keys = ("host", "port", "database")
    return all(str(a[k]) == str(b[k]) for k in keys)


def check_database_uri(
    configured: LettaDatabase | None,
    config_error: str | None,
    server_env: Mapping[str, str] | None,
    compose_text: str | None,
) -> Finding:
    """LETTA_PG_URI explicitly set (not a documentation placeholder), for letta-ops and, where
    we can see it, for the server process itself, and both pointing at the same database."""
    if config_error is not None:
        return action(
            "database-uri",
            config_error,
            "Set LETTA_PG_URI to postgresql://USER:PASSWORD@HOST:PORT/DATABASE.",
        )
    if configured is None:
        return action(
            "database-uri",
            "no database is configured for letta-ops",
            "Set LETTA_PG_URI (or save a Letta Database block) for this server.",
        )
    if server_env is not None:
        uri = server_env.get("LETTA_PG_URI", "")
        if not uri:
            return action(
                "database-uri",
                "the running server has no LETTA_PG_URI: 0.12+ then use a default database "
                "while believing they run SQLite",
                "Restart the server with LETTA_PG_URI set explicitly.",
            )
        try:
            parts = parse_letta_pg_uri(uri)
        except InvalidDatabaseURI as exc:
            return action("database-uri", f"the running server's LETTA_PG_URI: {exc}", str(exc))
        if not _same_database(parts, configured.parts):
            return action(
                "database-uri",
                f"the server uses database {parts['database']} on {parts['host']}:"
                f"{parts['port']}, letta-ops is configured for {configured.redacted_uri()}",
                "Point LETTA_PG_URI (or the saved block) at the database the server uses.",
            )
        return ok("database-uri", f"server and letta-ops both use {configured.redacted_uri()}")
    if compose_text is not None and "LETTA_PG_URI" not in compose_text:
        return action(
            "database-uri",
            "the compose file never sets LETTA_PG_URI for the server",
            "Add LETTA_PG_URI to the Letta service's environment in the compose file.",
        )
    return ok(
        "database-uri",
        f"letta-ops uses {configured.redacted_uri()} (the server's own environment is not "
        "visible from here)",
    )


def check_home_writable(server_env: Mapping[str, str] | None, runtime_home: Path | None) -> Finding:
    """The server writes ``$LETTA_DIR`` (default ``~/.letta``): it must exist or be creatable,
    and be writable; tried for real with a scratch file, since a read-only mount passes
    ``os.access`` checks on some systems.

    Read from the running server's own environment when letta-ops' process runtime started
    it; else the runtime's HOME if it exists; else there is nothing here to check.
    """
    if server_env is None and (runtime_home is None or not runtime_home.exists()):
        return skipped(
            "home-writable",
            "the server was not started by letta-ops' process runtime on this host; check "
            "that its HOME (or LETTA_DIR) is writable where it runs",
        )
    env = server_env or {}
    home = Path(env.get("HOME") or runtime_home)
    target = Path(env["LETTA_DIR"]) if env.get("LETTA_DIR") else home / ".letta"
    where = "the server's" if server_env is not None else "the runtime's"
    probe_dir = target if target.exists() else home
    if not probe_dir.exists():
        return action(
            "home-writable",
            f"{where} HOME {home} does not exist",
            "Create it (writable by the server's user) or set HOME/LETTA_DIR to a writable "
            "directory.",
        )
    probe = probe_dir / f".letta-ops-doctor-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return action(
            "home-writable",
            f"{where} {probe_dir} is not writable ({exc.strerror})",
            "Make it writable or set LETTA_DIR to a writable directory; only PostgreSQL "
            "holds what must survive a redeploy.",
        )
    return ok("home-writable", f"{where} {probe_dir} is writable")


def check_sequences(health: list[dict]) -> list[Finding]:
    """From :func:`tasks.sequence_repair.sequence_health`: one finding for all sequences."""
    problems = [h for h in health if not h["ok"]]
    if not problems:
        return [ok("sequences", f"{len(health)} sequence column(s) healthy")]
    return [
        action(
            "sequences",
            p["problem"],
            "Run 'letta-ops repair-sequences' (it sets the default and moves the sequence "
            "past the maximum).",
        )
        for p in problems
    ]


def encryption_key_sources(
    server_env: Mapping[str, str] | None,
    runtime_env_names: set[str],
    compose_text: str | None,
) -> bool:
    """Whether LETTA_ENCRYPTION_KEY reaches the server (from what we can see of it)."""
    if server_env is not None:
        return bool(server_env.get("LETTA_ENCRYPTION_KEY"))
    if compose_text is not None:
        return "LETTA_ENCRYPTION_KEY" in compose_text
    return "LETTA_ENCRYPTION_KEY" in runtime_env_names or bool(
        os.environ.get("LETTA_ENCRYPTION_KEY")
    )


def check_encryption_key(version: str | None, configured: bool) -> Finding:
    if version is None:
        return skipped("encryption-key", "the server's version is unknown (see health)")
    if parse_server_version(version) < ENCRYPTION_FROM:
        return ok("encryption-key", f"Letta {version} does not encrypt columns")
    if not configured:
        return action(
            "encryption-key",
            f"Letta {version} encrypts secrets with LETTA_ENCRYPTION_KEY, and none is set",
            "Set LETTA_ENCRYPTION_KEY for the server and keep a copy outside the server; a "
            "dump is only fully usable with it.",
        )
    return ok("encryption-key", "LETTA_ENCRYPTION_KEY is configured (value not read)")


def check_compose_pin(compose_file: Path | None, service: str) -> Finding:
    if compose_file is None:
        return skipped("compose-pin", "no compose file given (--compose-file)")
    from letta_ops.tasks.letta_runtime_compose import compose_image_tag

    tag = compose_image_tag(compose_file.read_text(), service)
    if tag is None or tag == "latest":
        shown = "latest" if tag == "latest" else "no tag (= latest)"
        return action(
            "compose-pin",
            f"{compose_file} runs service {service!r} on {shown}: one pull can cross a "
            "schema break",
            f"Pin it: 'letta-ops upgrade' pins it for you, or set image: letta/letta:X.Y.Z "
            f"in {compose_file.name}.",
        )
    return ok("compose-pin", f"service {service!r} is pinned to {tag}")


def check_dump_space(database_bytes: int, directory: Path) -> Finding:
    free = shutil.disk_usage(directory).free
    need = database_bytes * DUMP_SPACE_FACTOR
    if free < need:
        return action(
            "dump-space",
            f"{free} bytes free in {directory}, a dump and restore of the {database_bytes}-byte "
            f"database need about {need}",
            f"Free space in {directory} (or point TMPDIR elsewhere) before the next backup or "
            "upgrade.",
        )
    return ok(
        "dump-space", f"{free} bytes free in {directory} for a {database_bytes}-byte database"
    )


def dump_directory() -> Path:
    return Path(tempfile.gettempdir())


def check_backup_age(
    newest_verified: datetime | None, now: datetime, max_age_hours: float, store: str
) -> Finding:
    if newest_verified is None:
        return action(
            "backup-age",
            f"no verified backup set of this server in {store}",
            "Run 'letta-ops backup' now and keep the nightly-backup deployment scheduled.",
        )
    age_hours = (now - newest_verified).total_seconds() / 3600
    if age_hours > max_age_hours:
        return action(
            "backup-age",
            f"the newest verified backup is {age_hours:.1f} h old (limit {max_age_hours:g} h)",
            "Run 'letta-ops backup' and check why the nightly-backup deployment stopped.",
        )
    return ok("backup-age", f"the newest verified backup is {age_hours:.1f} h old")


def newest_verified_backup(store, server: str) -> datetime | None:
    from letta_ops.tasks.backup_catalog import list_backup_sets

    for backup_set in list_backup_sets(store, server):
        if backup_set.verified and backup_set.created_at is not None:
            created = backup_set.created_at
            return created if created.tzinfo else created.replace(tzinfo=UTC)
    return None


# --------------------------------------------------------------------------------------------
# What the server process sees
# --------------------------------------------------------------------------------------------


def server_process_environment(state_dir: Path) -> dict[str, str] | None:
    """The environment of the server letta-ops' process runtime started, if it runs here.

    Used only to check which variables are set; values never leave this module.
    """
    import psutil

    from letta_ops.tasks.letta_runtime_process import running_server

    record = running_server(state_dir)
    if record is None:
        return None
    try:
        return dict(psutil.Process(record.pid).environ())
    except psutil.Error:
        return None


def check_backup_encryption(store_url: str, key_id: str | None, keys: int) -> Finding:
    """Whether new backup sets are encrypted on the client (and with which key id). A set in
    S3 holds every agent's memory and the whole database: unencrypted there is an action; a
    local directory (the demo, a disk of the host) is the operator's call."""
    check = "backup-encryption"
    if key_id is not None:
        older = f"; {keys - 1} older key(s) listed for reading" if keys > 1 else ""
        return ok(
            check, f"new sets in {store_url} are encrypted (AES-256-GCM, key id {key_id}){older}"
        )
    readable = f" ({keys} key(s) listed for reading older sets)" if keys else ""
    if store_url.startswith("s3://"):
        return action(
            check,
            f"new sets in {store_url} are stored unencrypted{readable}",
            "Make a key with 'letta-ops backups new-key', keep a copy outside the bucket, and "
            "set LETTA_OPS_ENCRYPTION_KEY (or --encryption-key-file, or the store block's "
            "encryption_key).",
        )
    return ok(check, f"new sets in {store_url} are not encrypted (a local directory){readable}")


def check_backup_authentication(store, server: str) -> Finding:
    """Whether the repository has a key that authenticates its sets, and whether any set of
    this server fails authentication (planted, edited or copied: quarantined, never used)."""
    from letta_ops.tasks.backup_catalog import (
        keyless_warning,
        list_backup_sets,
        repository_keys_of,
    )

    check = "backup-authentication"
    warning = keyless_warning(store)
    if warning:
        return action(
            check,
            warning,
            "Make a key with 'letta-ops backups new-key', keep a copy outside the bucket, and set "
            "LETTA_OPS_ENCRYPTION_KEY (or LETTA_OPS_SIGNING_KEY, or the store block's field).",
        )
    keys = repository_keys_of(store)
    if not keys:
        return ok(check, f"{store.describe()} is a local directory without a key")
    untrusted = [s for s in list_backup_sets(store, server) if s.trust == "untrusted"]
    if untrusted:
        first = untrusted[0]
        return action(
            check,
            f"{len(untrusted)} set(s) of {server} fail authentication, e.g. "
            f"{first.server}/{first.set_id}: {first.trust_reason}",
            "Find out who wrote them (the bucket's access log); they are never used or "
            "pruned; remove each with 'letta-ops backups forget SET --execute'.",
        )
    return ok(check, f"sets in {store.describe()} are authenticated (key id {keys.current})")


def needs_action(findings: list[Finding]) -> bool:
    return any(f.status == "action" for f in findings)


def check_pg_tools(db) -> Finding:
    """Which pg_dump/pg_restore letta-ops will run (on this host, or inside the database's
    compose service), and that they answer."""
    from letta_ops.tasks.pg_client_tools import client_tools

    tools = client_tools(db)
    return ok("pg-tools", f"{tools.describe()}: {tools.version('pg_dump')}")


def check_runtime(runtime) -> Finding:
    """Which runtime letta-ops will drive for upgrades and rollbacks, and whether it can."""
    from letta_ops.tasks.errors import Refused

    try:
        runtime.require_drivable()
    except Refused as exc:
        return action("runtime", f"{runtime.describe()}: cannot drive it", str(exc))
    return ok("runtime", runtime.describe())


# --------------------------------------------------------------------------------------------
# Who can reach the server, and who can destroy the backups
# --------------------------------------------------------------------------------------------


def check_server_auth(
    refused: bool | None,
    error: str | None,
    base_url: str,
    password_configured: bool,
    open_by_choice: bool,
) -> Finding:
    """Whether ``GET /v1/agents/`` without credentials is refused.

    Why: a server letta-ops (or a runbook) started without ``--secure`` hands every agent's
    memory to whoever reaches its port, and nobody notices because letta-ops itself sends the
    password. Open is accepted only when the operator said so (``open_server`` /
    ``LETTA_OPS_OPEN_SERVER=1``); the finding still says it is open.
    """
    if refused is None:
        return skipped("server-auth", f"{base_url} did not answer ({error}); see health")
    if refused:
        return ok("server-auth", f"{base_url} refuses GET /v1/agents/ without credentials")
    detail = f"{base_url} answers GET /v1/agents/ without credentials: it is OPEN"
    if open_by_choice:
        return ok("server-auth", f"{detail}, as the operator chose (open_server)")
    if password_configured:
        return action(
            "server-auth",
            f"{detail} although a password is configured (LETTA_API_KEY)",
            "Restart it secured: 'letta-ops runtime stop' then 'letta-ops runtime start "
            "--version X.Y.Z' (it starts with --secure and the password), or set "
            "LETTA_SERVER_SECURE=true and LETTA_SERVER_PASSWORD where it runs.",
        )
    return action(
        "server-auth",
        f"{detail}; anyone who reaches it can read and change every agent",
        "Set LETTA_API_KEY (or the Letta Server block's password) and restart it with "
        "'letta-ops runtime start', or declare it open on purpose with LETTA_OPS_OPEN_SERVER=1.",
    )


def anonymous_access_refused(base_url: str) -> tuple[bool | None, str | None]:
    """(refused?, error): the same probe the process runtime runs after every start."""
    import httpx

    from letta_ops.tasks.letta_runtime_process import anonymous_request_refused

    try:
        return anonymous_request_refused(base_url), None
    except httpx.HTTPError as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def requested_object_lock(store, environ: Mapping[str, str] | None = None):
    """The lock new sets will be written with: ``LETTA_OPS_LOCK_DAYS`` / ``_MODE``, else the
    store block's; None when none is asked for. Bad values raise ``Refused``."""
    from letta_ops.blocks.backup_store import LOCK_DAYS_ENV, LOCK_MODE_ENV
    from letta_ops.tasks.object_store import object_lock_from_settings

    env = os.environ if environ is None else environ
    if env.get(LOCK_DAYS_ENV, "").strip():
        return object_lock_from_settings(
            env[LOCK_DAYS_ENV], env.get(LOCK_MODE_ENV), source=LOCK_DAYS_ENV
        )
    return getattr(store, "lock", None)


def check_backup_lock(bucket_lock, requested, store_url: str) -> Finding:
    """Whether the store can keep sets immutable (S3 Object Lock) and whether new sets are
    locked. ``bucket_lock`` is None for a store that has no Object Lock (a directory)."""
    asked = (
        f"; new sets are locked {requested.mode.lower()} for {requested.days:g} day(s)"
        if requested
        else ""
    )
    if bucket_lock is None or not bucket_lock.enabled:
        where = "a directory cannot lock objects" if bucket_lock is None else "no Object Lock"
        if requested:
            return action(
                "backup-lock",
                f"{store_url}: {where}, but a lock of {requested.days:g} day(s) is asked for: "
                "every backup will be refused",
                "Back up into an S3 bucket created with Object Lock enabled, or unset "
                "LETTA_OPS_LOCK_DAYS (or the store block's lock_days).",
            )
        return ok(
            "backup-lock",
            f"{store_url}: {where}; sets can be deleted by any credentials allowed to delete",
        )
    if not bucket_lock.default_mode and not requested:
        return ok(
            "backup-lock",
            f"{store_url}: {bucket_lock.describe()}; new sets are NOT locked (set "
            "LETTA_OPS_LOCK_DAYS or pass --lock-days)",
        )
    return ok("backup-lock", f"{store_url}: {bucket_lock.describe()}{asked}")


def check_backup_delete(can_delete: bool | None, sets_locked: bool, store_url: str) -> Finding:
    """Whether the credentials in use can delete objects (a probe that deletes nothing).

    Credentials that can delete sets that nothing locks are how a leaked key or ransomware
    destroys every backup: that needs action. Deleting rights with locked sets, or no
    deleting rights, are reported as they are.
    """
    if can_delete is None:
        return skipped("backup-delete", f"{store_url}: a local directory (the probe is for S3)")
    if not can_delete:
        return ok("backup-delete", f"{store_url}: these credentials cannot delete (AccessDenied)")
    if sets_locked:
        return ok(
            "backup-delete",
            f"{store_url}: these credentials can delete, but Object Lock keeps locked sets "
            "until their lock ends",
        )
    return action(
        "backup-delete",
        f"{store_url}: these credentials can delete, and nothing locks the sets: a leaked key "
        "can destroy every backup",
        "Back up with credentials that cannot delete (README 'Least privilege': backup, "
        "restore and prune roles), or lock sets with --lock-days on a bucket with Object Lock.",
    )
