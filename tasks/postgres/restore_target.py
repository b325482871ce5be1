"""The database a restore writes into: which one it is, and whether it may be overwritten.

Why its own module: a restore onto a *different* database (a staging copy, a new host after a
disk loss) is the one place an operator types a database on the command line. A password typed
there would sit in the process list, the shell history and the flow run's recorded
parameters, so a URI with a password is refused and the password comes from ``PGPASSWORD`` or
a saved Letta Database block. And a restore must never silently overwrite a database that
holds tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlparse

import sqlalchemy as sa
from pydantic import SecretStr

from ..errors import Refused
from .database import (
    PostgresDatabase,
    extra_tables_from_env,
    parse_letta_pg_uri,
)
from .letta_schema import connect, database_exists


class RestoreTargetRefused(Refused):
    """The target database cannot be used as given; nothing was changed."""


def is_uri(reference: str) -> bool:
    return "://" in reference


def require_reference(reference: str) -> str:
    """The ``--database`` text, stripped; refused when empty."""
    text = (reference or "").strip()
    if not text:
        raise RestoreTargetRefused(
            "Name the database to restore into with --database: a saved Letta Database block "
            "or postgresql://USER@HOST:PORT/DATABASE (password in PGPASSWORD)."
        )
    return text


def database_from_uri(
    text: str,
    environ: Mapping[str, str] | None = None,
    model: type[PostgresDatabase] = PostgresDatabase,
) -> PostgresDatabase:
    """``postgresql://USER@HOST:PORT/DB``, the password from ``PGPASSWORD`` (never the URI)."""
    env = os.environ if environ is None else environ
    parsed = urlparse(text)
    if parsed.password:
        raise RestoreTargetRefused(
            "The --database URI contains a password, which would show in the process list "
            "and the run's parameters; remove it and set PGPASSWORD, or save a Letta "
            "Database block and pass its name."
        )
    parse_letta_pg_uri(text)  # scheme, user, host, database, placeholders
    password = env.get("PGPASSWORD", "")
    netloc = parsed.netloc
    if password:
        user, _, hostport = netloc.rpartition("@")
        netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    bin_dir = env.get("LETTA_OPS_PG_BIN")
    return model(
        uri=SecretStr(parsed._replace(netloc=netloc).geturl()),
        db_schema=env.get("LETTA_PG_SCHEMA") or None,
        extra_tables=extra_tables_from_env(env),
        pg_bin_dir=Path(bin_dir) if bin_dir else None,
    )


def same_database(a: PostgresDatabase, b: PostgresDatabase) -> bool:
    """Whether two configurations name the same database on the same PostgreSQL server."""
    pa, pb = a.parts, b.parts
    hosts = {"localhost", "127.0.0.1", "::1"}
    same_host = pa["host"] == pb["host"] or {pa["host"], pb["host"]} <= hosts
    return same_host and pa["port"] == pb["port"] and pa["database"] == pb["database"]


def user_table_count(db: PostgresDatabase) -> int:
    """Tables outside PostgreSQL's own schemas; 0 for a database that does not exist."""
    if not database_exists(db):
        return 0
    with connect(db) as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_tables "
                    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                )
            ).scalar()
        )


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (a restored server must not start
    where another one answers: its health check would be fooled)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


#: Objects a database holds besides PostgreSQL's own and its extensions' (pg_depend 'e'):
#: relations, routines, free-standing types and schemas other than ``public``.
_OWN_OBJECTS = """
WITH member AS (SELECT objid FROM pg_depend WHERE deptype = 'e'),
     user_ns AS (SELECT oid FROM pg_namespace
                 WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                   AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%')
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_ns)
          AND oid NOT IN (SELECT objid FROM member))
     + (SELECT count(*) FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_ns)
          AND oid NOT IN (SELECT objid FROM member))
     + (SELECT count(*) FROM pg_type WHERE typnamespace IN (SELECT oid FROM user_ns)
          AND typrelid = 0 AND typelem = 0 AND oid NOT IN (SELECT objid FROM member))
     + (SELECT count(*) FROM user_ns WHERE oid <> 'public'::regnamespace
          AND oid NOT IN (SELECT objid FROM member))
"""


def pgvector_schema_if_empty(db: PostgresDatabase) -> tuple[bool, str | None]:
    """Whether ``db`` exists and holds nothing but extensions (no table, view, sequence,
    routine, type or schema of anyone's), and the schema pgvector is installed in (None:
    not installed). A restore may drop such a database before it restores, instead of after
    (where DROP DATABASE's checkpoint writes every page just restored), and recreate it as it
    was if the restore fails."""
    if not database_exists(db):
        return False, None
    with connect(db) as conn:
        own = int(conn.execute(sa.text(_OWN_OBJECTS)).scalar())
        vector = conn.execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
        ).scalar()
    return own == 0, vector
