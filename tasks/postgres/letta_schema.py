"""The Letta PostgreSQL database: admin statements, schema facts and row counts.

Why this module: upgrades, rollbacks and drills need a handful of database operations that
the Letta API cannot do (create/drop a database, install pgvector, read the alembic revision,
count rows). They all go through sqlalchemy with the pure-Python pg8000 driver so that no
password ever appears in a process argument.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import time
from collections.abc import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import Refused

# Defined in letta_ops.tasks.errors (import-light: the command line's error path needs it); used
# from here.
from ..errors import database_error_message as database_error_message
from .connect_errors import (
    DatabaseConnectionFailed,
    connection_failure,
    is_connection_failure,
)
from .database import PostgresDatabase
from .letta_objects import LETTA_TABLES, inventory
from .tls import PostgresTls


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def engine_for(db: PostgresDatabase, autocommit: bool = False) -> Iterator[Engine]:
    """An engine on pg8000 with the database's TLS settings
    (:mod:`letta_ops.tasks.postgres.tls`)."""
    kwargs: dict = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    connect_args = pg8000_connect_args(db.tls())
    engine = sa.create_engine(
        db.sqlalchemy_url("pg8000"),
        poolclass=sa.pool.NullPool,
        connect_args=connect_args,
        **kwargs,
    )
    sa.event.listen(engine, "connect", _no_timeout_after_connect)
    if connect_args["ssl_context"] is None:  # prefer/allow: TLS if offered
        sa.event.listen(engine, "do_connect", _tls_if_offered)
    try:
        yield engine
    finally:
        engine.dispose()


def pg8000_connect_args(tls: PostgresTls) -> dict:
    """pg8000's keywords for these settings: ``ssl_context`` and ``connect_timeout``."""
    args: dict = {"ssl_context": tls.ssl_context()}
    if tls.connect_timeout:
        args["timeout"] = tls.connect_timeout
    return args


@functools.cache
def _unverified_tls() -> ssl.SSLContext:
    """The context pg8000 makes for ``sslmode=prefer``/``allow`` (TLS, nothing verified), made
    once per process: making it loads the system's CA store, 20 ms of a 24 ms connection on
    loopback, and a restore makes a dozen connections (issue #32)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


#: Servers (host, port) that refused TLS to this process, and when: ``prefer`` connects there
#: in plaintext at once for a minute (one TCP connection, as pg8000 makes, instead of two).
_REFUSED_TLS: dict[tuple[object, object], float] = {}
_REFUSAL_REMEMBERED_SECONDS = 60.0


def _tls_if_offered(dialect, _record, cargs, cparams):
    """``sslmode=prefer`` as pg8000 does it with ``ssl_context=None`` (TLS if the server offers
    it, else plaintext), with the context made once. pg8000 goes on in plaintext on the socket
    the server refused TLS on; given a context it gives up instead, so a refusal costs one
    more connect, and is remembered for a minute (a server that turns TLS on is seen then)."""
    connect = dialect.loaded_dbapi.connect
    server = (cparams.get("host"), cparams.get("port"))
    refused_at = _REFUSED_TLS.get(server)
    if refused_at is None or time.monotonic() - refused_at > _REFUSAL_REMEMBERED_SECONDS:
        try:
            return connect(*cargs, **{**cparams, "ssl_context": _unverified_tls()})
        except dialect.loaded_dbapi.InterfaceError as exc:
            if str(exc) != "Server refuses SSL":
                raise
            _REFUSED_TLS[server] = time.monotonic()
    return connect(*cargs, **{**cparams, "ssl_context": False})


def _no_timeout_after_connect(dbapi_connection, _record) -> None:
    """pg8000 keeps its ``timeout`` on the socket for every later read: a long statement
    (a big count, DROP DATABASE's checkpoint) must not die of connect_timeout."""
    sock = getattr(dbapi_connection, "_usock", None)
    if sock is not None:
        sock.settimeout(None)


@contextlib.contextmanager
def connect(db: PostgresDatabase, autocommit: bool = False) -> Iterator[Connection]:
    """A connection as letta-ops' role; a failure to connect is one sentence (host:port, why,
    the fix), raised as :class:`DatabaseConnectionFailed`."""
    with engine_for(db, autocommit) as engine:
        try:
            conn = engine.connect()
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            p = db.parts
            raise DatabaseConnectionFailed(
                connection_failure(exc, str(p["host"]), int(p["port"]), db.tls().describe())
            ) from exc
        with conn:
            if db.db_schema:
                conn.execute(sa.text(f"SET search_path TO {quote_ident(db.db_schema)}, public"))
            yield conn


def database_exists(db: PostgresDatabase) -> bool:
    with connect(db.for_database("postgres")) as conn:
        return bool(
            conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": db.database_name}
            ).scalar()
        )


def create_database(
    db: PostgresDatabase, with_pgvector: bool = True, pgvector_schema: str | None = None
) -> None:
    """Create the database (must not exist) and, by default, the pgvector extension (in
    ``pgvector_schema`` when given: a dump names pgvector's type by the schema it had)."""
    with connect(db.for_database("postgres"), autocommit=True) as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote_ident(db.database_name)}"))
    if with_pgvector:
        ensure_pgvector(db, pgvector_schema)


def drop_database(db: PostgresDatabase) -> None:
    """Drop the database, ending other sessions on it first."""
    with connect(db.for_database("postgres"), autocommit=True) as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": db.database_name},
        )
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quote_ident(db.database_name)}"))


#: Suffix of the database a recreate-mode restore fills before it replaces the live one.
INCOMING_SUFFIX = "_lops_incoming"


def incoming_database(db: PostgresDatabase) -> PostgresDatabase:
    """The database a restore fills beside ``db`` (same server and credentials) and swaps in
    only once it is complete: the live database stays as it was until then."""
    return db.for_database(db.database_name[: 63 - len(INCOMING_SUFFIX)] + INCOMING_SUFFIX)


def swap_in_database(incoming: PostgresDatabase, live: PostgresDatabase) -> None:
    """Replace ``live`` by ``incoming``: drop it (ending its sessions), rename ``incoming``.

    Between the two statements no database has the live name; a crash there leaves the
    complete incoming copy, which a rerun of the restore replaces from the set anyway.
    """
    drop_database(live)
    with connect(live.for_database("postgres"), autocommit=True) as conn:
        conn.execute(
            sa.text(
                f"ALTER DATABASE {quote_ident(incoming.database_name)} "
                f"RENAME TO {quote_ident(live.database_name)}"
            )
        )


#: The order a reset drops Letta's objects in: tables first (their sequences and types are
#: still in use until then).
_DROP_STATEMENTS = {
    "table": "DROP TABLE IF EXISTS {} CASCADE",
    "sequence": "DROP SEQUENCE IF EXISTS {} CASCADE",
    "type": "DROP TYPE IF EXISTS {} CASCADE",
    "domain": "DROP DOMAIN IF EXISTS {} CASCADE",
}


class ResetRefused(Refused):
    """Dropping Letta's objects would have taken something that is not Letta's; nothing was
    dropped."""


def reset_schema_in_place(db: PostgresDatabase, also_tables: Iterable[str] = ()) -> int:
    """Drop Letta's objects in its schema (tables, their sequences and types: see
    :mod:`letta_ops.tasks.postgres.letta_objects`; ``also_tables``, the tables of the set about to
    be
    restored, count as Letta's); keep the database, the schema, pgvector, every other schema
    and every object of the schema that is not Letta's. Returns how many objects were dropped.

    Why: a role that owns its tables but may not create databases or extensions (managed
    PostgreSQL) can still empty Letta's part of its schema for a restore, and a database
    Letta shares with the operator's own tables (Supabase) must keep them. One transaction:
    if anything that is not Letta's would go with Letta's objects (a view over Letta's
    tables, a foreign key to them, dropped by cascade), nothing is dropped and the sentence
    names it.
    """
    schema = db.db_schema or "public"
    tables = [*db.extra_tables, *also_tables]
    with connect(db) as conn:
        if not conn.execute(sa.text("SELECT to_regnamespace(:s)"), {"s": schema}).scalar():
            conn.execute(sa.text(f"CREATE SCHEMA {quote_ident(schema)}"))
            conn.commit()
            return 0
        before = inventory(conn, schema, tables)
        order = list(_DROP_STATEMENTS)
        for obj in sorted(before.letta, key=lambda o: order.index(o.kind)):
            conn.execute(sa.text(_DROP_STATEMENTS[obj.kind].format(obj.name)))
        after = inventory(conn, schema, tables)
        kept = {str(o) for o in after.left_alone_in_schema} | set(after.left_alone_constraints)
        lost = [
            *(str(o) for o in before.left_alone_in_schema if str(o) not in kept),
            *(c for c in before.left_alone_constraints if c not in kept),
            *(s for s in before.other_schemas if s not in after.other_schemas),
        ]
        if lost:
            conn.rollback()
            raise ResetRefused(
                f"Resetting Letta's objects in schema {schema} would also drop {lost[0]}"
                + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else "")
                + ", which is not Letta's but depends on Letta's tables; nothing was dropped; "
                "drop or detach it first."
            )
        if after.letta:
            conn.rollback()
            raise RuntimeError(
                f"resetting schema {schema} in place left {len(after.letta)} of Letta's "
                f"objects (first: {after.letta[0]}); nothing was dropped"
            )
        conn.commit()
    return len(before.letta)


def empty_database(
    db: PostgresDatabase, mode: str, pgvector_schema: str | None = None, also_tables=()
) -> None:
    """Make ``db`` ready for a restore, the ``mode`` way: ``recreate`` (drop, create, install
    pgvector, in ``pgvector_schema`` when the set's was there) or ``in-place``
    (:func:`reset_schema_in_place`: Letta's objects only). The mode comes from the
    pre-flight's ``letta_ops.tasks.postgres.privileges.restore_plan``, which proved the role may do
    it
    (and that recreating drops nothing but Letta's)."""
    if mode == "recreate":
        drop_database(db)
        create_database(db, with_pgvector=True, pgvector_schema=pgvector_schema)
    elif mode == "in-place":
        reset_schema_in_place(db, also_tables)
    else:
        raise Refused(f"unknown reset mode {mode!r}; use 'recreate' or 'in-place'")


def ensure_pgvector(db: PostgresDatabase, schema: str | None = None) -> str:
    """Install pgvector if missing (in ``schema`` when given, created if need be); return its
    version. Needs a superuser the first time."""
    with connect(db, autocommit=True) as conn:
        if schema:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
            conn.execute(
                sa.text(f"CREATE EXTENSION IF NOT EXISTS vector SCHEMA {quote_ident(schema)}")
            )
        else:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        return str(
            conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar()
        )


def alembic_revision(db: PostgresDatabase) -> str | None:
    """The schema's alembic revision, or None for a database Letta never migrated."""
    with connect(db) as conn:
        return revision_in_snapshot(conn)


def revision_in_snapshot(conn: Connection) -> str | None:
    """:func:`alembic_revision` on an open connection (a dump's snapshot: what it holds)."""
    exists = conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar()
    if not exists:
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def table_row_counts(db: PostgresDatabase, also_tables: Iterable[str] = ()) -> dict[str, int]:
    """Exact row counts of Letta's tables (:mod:`letta_ops.tasks.postgres.letta_objects`; with
    ``also_tables``, e.g. the tables of a set being compared), in one repeatable-read
    snapshot. The operator's own tables are not Letta's and are not counted."""
    with connect(db) as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        return counts_in_snapshot(conn, db.db_schema or "public", [*db.extra_tables, *also_tables])


def table_sizes(conn: Connection, schema: str, also_tables: Iterable[str] = ()) -> dict[str, int]:
    """Each of Letta's tables' size on disk (``pg_table_size``: rows and TOAST, no indexes),
    for balancing a restore's lanes; a catalog read, no table is scanned."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, pg_table_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names)"
        ),
        {"s": schema, "names": sorted(LETTA_TABLES | set(also_tables))},
    )
    return {name: int(size or 0) for name, size in rows}


def counts_in_snapshot(
    conn: Connection, schema: str, also_tables: Iterable[str] = ()
) -> dict[str, int]:
    """Row counts of Letta's tables in ``schema`` (and ``also_tables``), in the caller's
    transaction (a backup's: the dump's snapshot)."""
    tables = (
        conn.execute(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = :s "
                "AND tablename = ANY(:names) ORDER BY tablename"
            ),
            {"s": schema, "names": sorted(LETTA_TABLES | set(also_tables))},
        )
        .scalars()
        .all()
    )
    counts = {}
    for table in tables:
        counts[table] = int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
            ).scalar()
        )
    return counts
