"""Refuse a transaction-mode pooler where letta-ops needs one session: dumps, DDL, the reset.

Why: managed PostgreSQL hands out pooled URIs first (Supabase's port 6543, Neon's ``-pooler``
hosts, ``?pgbouncer=true`` from Prisma's docs). A transaction-mode pooler gives each
transaction whichever server connection is free, so session state does not survive from one
transaction to the next: ``SET``s, advisory locks, prepared statements, a multi-transaction
migration or a restore's ``SET search_path`` land on another backend. pg_dump may even appear
to work through one (a small dump completes), which is why the refusal rests on what breaks,
not on whether a dump happened to finish.

The fix is never to change the server's URI (the pooler is right for Letta's many short
transactions) but to give letta-ops a second, direct or session-mode URI of the same database:
``LETTA_OPS_DIRECT_PG_URI`` or the Letta Database block's ``direct_uri``.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..errors import Refused
from .database import PostgresDatabase
from .letta_schema import connect
from .tls import uri_query

#: Supabase's transaction pooler (Supavisor) listens here; its session mode is on 5432.
SUPABASE_TRANSACTION_PORT = 6543


class PoolerRefused(Refused):
    """letta-ops' URI goes through a transaction-mode pooler; nothing was run."""


def pooler_by_uri(uri: str, host: str, port: int) -> str | None:
    """Why the URI itself names a transaction pooler, or None."""
    if port == SUPABASE_TRANSACTION_PORT:
        return f"port {port} is Supabase's transaction pooler"
    if uri_query(uri).get("pgbouncer", "").lower() in ("true", "1", "yes"):
        return "the URI says pgbouncer=true"
    if "-pooler." in host:
        return f"{host} is a Neon pooler host"
    return None


def session_state_kept(db: PostgresDatabase) -> bool:
    """Whether a session's state survives from one transaction to the next.

    Two client sessions: A sets a custom setting, B then opens a transaction (a pooler hands
    it the backend A just released, most recently used first), A reads its setting back. On a
    real session A keeps it and B never sees it; behind a transaction pooler A has lost it or
    B has inherited it.
    """
    marker = "letta_ops.session_probe"
    with connect(db, autocommit=True) as a, connect(db, autocommit=True) as b:
        a.execute(sa.text(f"SET {marker} = 'a'"))
        b.execute(sa.text("BEGIN"))
        try:
            seen_by_b = b.execute(sa.text(f"SELECT current_setting('{marker}', true)")).scalar()
            kept_by_a = a.execute(sa.text(f"SELECT current_setting('{marker}', true)")).scalar()
        finally:
            b.execute(sa.text("COMMIT"))
    return kept_by_a == "a" and seen_by_b != "a"


def refuse_transaction_pooler(db: PostgresDatabase, what: str, probe: bool = True) -> None:
    """Refuse ``what`` (e.g. "pg_dump") before it runs when letta-ops' URI is pooled in
    transaction mode: named so by the URI, or (``probe``) shown by :func:`session_state_kept`."""
    p = db.parts
    host, port = str(p["host"]), int(p["port"])
    why = pooler_by_uri(db.ops_uri(), host, port)
    if why is None and probe and not session_state_kept(db):
        why = "session state is not kept between transactions"
    if why is None:
        return
    raise PoolerRefused(
        f"letta-ops cannot run {what} through the transaction-mode pooler at {host}:{port} "
        f"({why}): pg_dump, DDL and the reset need one session; fix: set "
        "LETTA_OPS_DIRECT_PG_URI (or the Letta Database block's direct_uri) to the direct or "
        "session-mode URI of the same database (Supabase: the session pooler on port 5432 or "
        "db.<project>.supabase.co; Neon: the host without -pooler) and keep the pooled URI in "
        "LETTA_PG_URI for the server."
    )
