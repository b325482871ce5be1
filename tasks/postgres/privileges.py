"""What the database role can do, and which way of emptying a database that allows.

Why this module: a restore must first empty the database it writes into, and there are two
ways, each needing different privileges. *Recreate* drops and creates the database and installs
pgvector: it needs CREATEDB (or a superuser) and, because pgvector is not a trusted extension,
a superuser. *In place* keeps the database and its pgvector extension and drops Letta's
objects in Letta's schema (:mod:`letta_ops.tasks.postgres.letta_objects`): it needs only ownership
of those objects. A
database that holds anything else (the operator's tables, other schemas: Supabase) is never
recreated, since that would drop them. Managed
PostgreSQL (RDS, Cloud SQL, Azure, Supabase) gives Letta a role that can do the second only.

Every destructive run asks :func:`choose_reset_mode` *before* it stops anything, so a role that
can do neither is refused with the missing privilege and its fix while the server still runs.
The facts are read once (:func:`probe_privileges`); the decisions are pure functions of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa

from ..errors import Refused, database_error_message
from .client_tools import client_tools
from .database import PostgresDatabase
from .letta_dependents import objects_depending_on, refuse_dependents
from .letta_objects import inventory
from .letta_schema import connect

ResetMode = Literal["recreate", "in-place"]
RequestedReset = Literal["auto", "recreate", "in-place"]

#: Majors the bundled client (18) is tested against; older servers need the precise
#: handling of settings newer clients emit (see ``letta_ops.tasks.postgres.dump``).
SUPPORTED_SERVER_MAJORS = range(14, 19)


class PrivilegeRefused(Refused):
    """The role lacks a privilege the chosen path needs; nothing was changed."""


@dataclass(frozen=True)
class ForeignObject:
    """An object in Letta's schema owned by a role the current one is not a member of."""

    kind: str
    name: str
    owner: str


@dataclass(frozen=True)
class DatabasePrivileges:
    """The facts about one role on one database that decide how a restore may proceed."""

    role: str
    database: str
    schema: str
    server_major: int
    superuser: bool
    createdb: bool
    owns_database: bool
    maintenance_connect: bool
    maintenance_error: str | None
    pgvector_installed: str | None
    pgvector_available: bool
    pgvector_trusted: bool
    schema_exists: bool
    schema_usage: bool
    schema_create: bool
    #: The schema's owner (or, for ``public`` since PostgreSQL 15, ``pg_database_owner``)
    #: may drop any object in it, whoever owns the object.
    owns_schema: bool = False
    foreign_objects: tuple[ForeignObject, ...] = field(default_factory=tuple)
    #: What the database holds that is not Letta's (``table public.app_notes``, ``schema auth
    #: (3 objects)``): left alone by a reset in place, lost by a recreate.
    not_letta: tuple[str, ...] = field(default_factory=tuple)
    #: What is not Letta's but depends on Letta's tables (a view over them, a foreign key to
    #: them): a reset in place refuses to take it
    #: (:mod:`letta_ops.tasks.postgres.letta_dependents`).
    dependents: tuple[str, ...] = field(default_factory=tuple)

    @property
    def can_create_database(self) -> bool:
        return self.superuser or self.createdb

    @property
    def can_create_pgvector(self) -> bool:
        """In a database it creates (and therefore owns): a superuser, or a trusted pgvector."""
        return self.pgvector_available and (self.superuser or self.pgvector_trusted)


_ROLE_SQL = """
SELECT current_user AS role, current_database() AS database,
       current_setting('server_version_num')::int / 10000 AS server_major,
       r.rolsuper AS superuser, r.rolcreatedb AS createdb,
       pg_has_role(current_user, d.datdba, 'MEMBER') AS owns_database,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector_installed,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') AS pgvector_available,
       COALESCE((SELECT bool_or(trusted) FROM pg_available_extension_versions
                 WHERE name = 'vector'), false) AS pgvector_trusted,
       to_regnamespace(:schema) IS NOT NULL AS schema_exists
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""

_SCHEMA_SQL = """
SELECT has_schema_privilege(:schema, 'USAGE') AS usage,
       has_schema_privilege(:schema, 'CREATE') AS create,
       pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = :schema),
                   'USAGE') AS owns_schema
"""


def probe_privileges(db: PostgresDatabase) -> DatabasePrivileges:
    """Read the facts, as the configured role, without changing anything; a URI through a
    transaction-mode pooler is refused first (the reset and the restore need one session)."""
    from .pooler import refuse_transaction_pooler

    refuse_transaction_pooler(db, "a restore or an upgrade")
    schema = db.db_schema or "public"
    with connect(db) as conn:
        row = conn.execute(sa.text(_ROLE_SQL), {"schema": schema}).mappings().one()
        usage = create = owns_schema = False
        foreign: list[ForeignObject] = []
        if row["schema_exists"]:
            rights = conn.execute(sa.text(_SCHEMA_SQL), {"schema": schema}).mappings().one()
            usage, create = bool(rights["usage"]), bool(rights["create"])
            owns_schema = bool(rights["owns_schema"])
        found = inventory(conn, schema, db.extra_tables)
        # Only Letta's objects are ever dropped: only theirs need an owner's right.
        foreign = [ForeignObject(o.kind, o.name, o.owner) for o in found.letta if not o.owned]
        dependents = objects_depending_on(conn, [o.name for o in found.letta if o.kind == "table"])
        conn.rollback()
    maintenance_error = None
    try:
        with connect(db.for_database("postgres")) as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any refusal means the recreate path cannot be taken
        maintenance_error = database_error_message(exc)
    return DatabasePrivileges(
        role=row["role"],
        database=row["database"],
        schema=schema,
        server_major=int(row["server_major"]),
        superuser=bool(row["superuser"]),
        createdb=bool(row["createdb"]),
        owns_database=bool(row["owns_database"]),
        maintenance_connect=maintenance_error is None,
        maintenance_error=maintenance_error,
        pgvector_installed=row["pgvector_installed"],
        pgvector_available=bool(row["pgvector_available"]),
        pgvector_trusted=bool(row["pgvector_trusted"]),
        schema_exists=bool(row["schema_exists"]),
        schema_usage=usage,
        schema_create=create,
        owns_schema=owns_schema,
        foreign_objects=tuple(foreign),
        not_letta=tuple(found.left_alone()),
        dependents=tuple(dependents),
    )


# --------------------------------------------------------------------------- decisions


def recreate_blockers(p: DatabasePrivileges) -> list[str]:
    """What stops this role from dropping, creating and equipping the database; each entry
    is one clause naming the privilege and its fix."""
    blockers = []
    if not p.maintenance_connect:
        blockers.append(
            f"it cannot connect to the maintenance database 'postgres' ({p.maintenance_error}); "
            f"fix: GRANT CONNECT ON DATABASE postgres TO {p.role}"
        )
    if not (p.superuser or p.owns_database):
        blockers.append(
            f"it does not own database {p.database} (DROP DATABASE needs the owner); "
            f"fix: ALTER DATABASE {p.database} OWNER TO {p.role}"
        )
    if not p.can_create_database:
        blockers.append(
            f"it cannot create databases (NOCREATEDB); fix: ALTER ROLE {p.role} CREATEDB"
        )
    if not p.can_create_pgvector:
        blockers.append(
            "it cannot create the pgvector extension in a new database (pgvector is not a "
            "trusted extension: only a superuser can); fix: run as a superuser, or keep the "
            "database and reset it in place"
            if p.pgvector_available
            else "pgvector is not available on this PostgreSQL server; fix: install pgvector"
        )
    return blockers


def in_place_blockers(p: DatabasePrivileges) -> list[str]:
    """What stops this role from emptying Letta's schema while keeping the database."""
    blockers = []
    if not p.pgvector_installed:
        blockers.append(
            f"the pgvector extension is not installed in {p.database} and this role cannot "
            "create it; fix: ask your provider's admin to run CREATE EXTENSION vector in "
            f"{p.database} once"
            if not (p.superuser or p.pgvector_trusted)
            else f"the pgvector extension is not installed in {p.database}; fix: "
            "CREATE EXTENSION vector"
        )
    if p.schema_exists and not (p.schema_usage and p.schema_create):
        blockers.append(
            f"it lacks USAGE and CREATE on schema {p.schema}; fix: "
            f"GRANT USAGE, CREATE ON SCHEMA {p.schema} TO {p.role}"
        )
    if not p.schema_exists and not p.owns_database and not p.superuser:
        blockers.append(
            f"schema {p.schema} does not exist and the role cannot create it; fix: "
            f"CREATE SCHEMA {p.schema} AUTHORIZATION {p.role}"
        )
    if p.foreign_objects and not (p.superuser or p.owns_schema):
        owners = sorted({o.owner for o in p.foreign_objects})
        first = p.foreign_objects[0]
        blockers.append(
            f"{len(p.foreign_objects)} objects in schema {p.schema} belong to "
            f"{', '.join(owners)} (first: {first.kind} {first.name}), and only an owner can "
            f"drop them; fix: GRANT {owners[0]} TO {p.role}, or REASSIGN OWNED BY "
            f"{owners[0]} TO {p.role}"
        )
    return blockers


def shared_blockers(p: DatabasePrivileges) -> list[str]:
    """What recreating the database would destroy that is not Letta's: a database Letta
    shares (other schemas, the operator's tables beside Letta's) is only ever reset in place."""
    if not p.not_letta:
        return []
    more = f" and {len(p.not_letta) - 3} more" if len(p.not_letta) > 3 else ""
    return [
        f"database {p.database} also holds what is not Letta's ({', '.join(p.not_letta[:3])}"
        f"{more}), which recreating it would drop; fix: --reset in-place, which touches only "
        "Letta's objects"
    ]


def choose_reset_mode(p: DatabasePrivileges, requested: RequestedReset = "auto") -> ResetMode:
    """``recreate`` when asked or possible, else ``in-place``; refused with the fix when the
    role can do neither (or not the one asked for). A database that holds anything but
    Letta's objects is never recreated (:func:`shared_blockers`)."""
    recreate = recreate_blockers(p) + shared_blockers(p)
    in_place = in_place_blockers(p)
    if requested == "recreate":
        if recreate:
            raise PrivilegeRefused(
                f"Role {p.role} cannot recreate database {p.database}: {recreate[0]} "
                "(or use --reset in-place)."
            )
        return "recreate"
    if requested == "in-place":
        if in_place:
            raise PrivilegeRefused(
                f"Role {p.role} cannot reset database {p.database} in place: {in_place[0]}."
            )
        return "in-place"
    if not recreate:
        return "recreate"
    if not in_place:
        return "in-place"
    raise PrivilegeRefused(
        f"Role {p.role} can neither recreate database {p.database} ({recreate[0]}) nor "
        f"reset it in place ({in_place[0]}); nothing was changed."
    )


def require_supported_server(server_major: int, client_major: int) -> None:
    """The client tools must be of the server's major or newer (pg_dump refuses an older
    client, and its archive could not be restored by it), and the server a tested major."""
    if client_major < server_major:
        raise PrivilegeRefused(
            f"The PostgreSQL client tools are major {client_major}, older than the server's "
            f"{server_major}: pg_dump cannot dump a newer server; set pg_bin_dir on the "
            f"Letta Database block (or LETTA_OPS_PG_BIN) to a client of major "
            f">= {server_major}."
        )
    if server_major not in SUPPORTED_SERVER_MAJORS:
        raise PrivilegeRefused(
            f"PostgreSQL {server_major} is not a supported server major "
            f"({SUPPORTED_SERVER_MAJORS.start}-{SUPPORTED_SERVER_MAJORS.stop - 1}); "
            "upgrade the database server first."
        )


def restore_plan(db: PostgresDatabase, requested: RequestedReset | None = None) -> dict:
    """Pre-flight for every path that empties ``db`` and restores into it: the mode it will
    use and the facts that decided it. Raises :class:`PrivilegeRefused` with the fix."""
    facts = probe_privileges(db)
    require_supported_server(facts.server_major, client_tools(db).major())
    mode = choose_reset_mode(facts, requested or db.reset_mode)
    if mode == "in-place":  # the reset would refuse after the stop, and so would any undo
        refuse_dependents(facts.schema, facts.dependents)
    return {
        "reset_mode": mode,
        # Scratch databases (drills, exports from a scratch copy) need what recreate needs
        # short of owning the live database.
        "scratch_databases": facts.maintenance_connect
        and facts.can_create_database
        and facts.can_create_pgvector,
        "role": facts.role,
        "superuser": facts.superuser,
        "server_major": facts.server_major,
        "pgvector": facts.pgvector_installed,
        "left_alone": list(facts.not_letta),
    }


def require_table_privileges(db: PostgresDatabase, table: str, privileges: tuple[str, ...]) -> None:
    """Refuse (nothing changed) unless the role holds ``privileges`` on ``table`` of Letta's
    schema: a delete that fails half way through a cleanup helps nobody."""
    schema = db.db_schema or "public"
    qualified = f'"{schema}"."{table}"'
    with connect(db) as conn:
        role = conn.execute(sa.text("SELECT current_user")).scalar()
        missing = [
            p
            for p in privileges
            if not conn.execute(
                sa.text("SELECT has_table_privilege(:t, :p)"), {"t": qualified, "p": p}
            ).scalar()
        ]
    if missing:
        raise PrivilegeRefused(
            f"Role {role} lacks {', '.join(missing)} on {schema}.{table}; fix: GRANT "
            f"{', '.join(missing)} ON {schema}.{table} TO {role}."
        )
