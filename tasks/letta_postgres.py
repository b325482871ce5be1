"""The Letta PostgreSQL database: admin statements, schema facts and row counts.

Why this module: upgrades, rollbacks and drills need a handful of database operations that
the Letta API cannot do (create/drop a database, install pgvector, read the alembic revision,
count rows). They all go through sqlalchemy with the pure-Python pg8000 driver so that no
password ever appears in a process argument.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from blocks.letta_database import LettaDatabase


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def engine_for(db: LettaDatabase, autocommit: bool = False) -> Iterator[Engine]:
    kwargs = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = sa.create_engine(db.sqlalchemy_url("pg8000"), poolclass=sa.pool.NullPool, **kwargs)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def connect(db: LettaDatabase, autocommit: bool = False) -> Iterator[Connection]:
    with engine_for(db, autocommit) as engine, engine.connect() as conn:
        if db.db_schema:
            conn.execute(sa.text(f"SET search_path TO {quote_ident(db.db_schema)}, public"))
        yield conn


def database_exists(db: LettaDatabase) -> bool:
    with connect(db.for_database("postgres")) as conn:
        return bool(
            conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": db.database_name}
            ).scalar()
        )


def create_database(db: LettaDatabase, with_pgvector: bool = True) -> None:
    """Create the database (must not exist) and, by default, the pgvector extension."""
    with connect(db.for_database("postgres"), autocommit=True) as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote_ident(db.database_name)}"))
    if with_pgvector:
        ensure_pgvector(db)


def drop_database(db: LettaDatabase) -> None:
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


def ensure_pgvector(db: LettaDatabase) -> str:
    """Install pgvector if missing; return its version. Needs a superuser the first time."""
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        return str(
            conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar()
        )


def alembic_revision(db: LettaDatabase) -> str | None:
    """The schema's alembic revision, or None for a database Letta never migrated."""
    with connect(db) as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar()
        if not exists:
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def table_row_counts(db: LettaDatabase) -> dict[str, int]:
    """Exact row counts of every table in Letta's schema, in one repeatable-read snapshot."""
    with connect(db) as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        return counts_in_snapshot(conn, db.db_schema or "public")


def counts_in_snapshot(conn: Connection, schema: str) -> dict[str, int]:
    tables = (
        conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"),
            {"s": schema},
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
