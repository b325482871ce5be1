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
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ..letta.versions import (
    ALEMBIC_HEADS,
    parse_server_version,
    release_at_revision,
)
from ..postgres.database import (
    InvalidDatabaseURI,
    PostgresDatabase,
    parse_letta_pg_uri,
)
from ..postgres.letta_schema import connect
from .findings import (
    DUMP_SPACE_FACTOR,
    ENCRYPTION_FROM,
    Finding,
    action,
    ok,
    skipped,
)

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


def check_restore_privileges(db: PostgresDatabase) -> Finding:
    """The pre-flight every destructive run makes: may this role empty the database and
    restore into it (recreate, or reset in place), with client tools that fit the server?"""
    from ..errors import Refused  # privileges, or what depends on Letta's tables
    from ..postgres.privileges import restore_plan

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


def pgvector_version(db: PostgresDatabase) -> str | None:
    with connect(db) as conn:
        return conn.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()


def _same_database(a: dict, b: dict) -> bool:
    keys = ("host", "port", "database")
    return all(str(a[k]) == str(b[k]) for k in keys)


def check_database_uri(
    configured: PostgresDatabase | None,
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
    """From :func:`letta_ops.tasks.postgres.sequence_repair.sequence_health`: one finding for all
    sequences."""
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
    from ..runtimes.compose import compose_image_tag

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
    from ..sets.catalog import list_backup_sets

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

    from ..runtimes.process import running_server

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
    from ..sets.catalog import (
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
    from ..postgres.client_tools import client_tools

    tools = client_tools(db)
    return ok("pg-tools", f"{tools.describe()}: {tools.version('pg_dump')}")


def check_runtime(runtime) -> Finding:
    """Which runtime letta-ops will drive for upgrades and rollbacks, and whether it can."""
    from ..errors import Refused

    try:
        runtime.require_drivable()
    except Refused as exc:
        return action("runtime", f"{runtime.describe()}: cannot drive it", str(exc))
    return ok("runtime", runtime.describe())
