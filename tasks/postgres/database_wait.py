"""Wait for PostgreSQL to take sessions again before an undo restores into it.

Why: a restart of PostgreSQL (a failover, a managed service's maintenance, an operator's
``systemctl restart``) during an upgrade or a rollback fails the step that ran, and the undo
began at once, while the server was still shutting down or starting up: its first connection
failed ("the database system is shutting down") and the undo gave up, leaving the Letta
server down with a complete backup in hand (found by ``tests/test_injected_faults_e2e.py``).
A restart takes seconds; the undo waits for it, bounded, and only for failures a restart
causes (refused, network, "starting up"/"shutting down"), never for a wrong password.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from ..errors import database_error_message
from .connect_errors import DatabaseConnectionFailed, exception_chain
from .database import PostgresDatabase
from .letta_schema import connect

#: How long an undo waits for its database to come back (a restart, not an outage).
DATABASE_BACK_SECONDS = 120.0

#: SQLSTATEs of a server that is restarting: cannot_connect_now (57P03), admin_shutdown,
#: crash_shutdown; connection_failure (08006) and a refused or dropped socket have no code.
_RESTARTING = ("57P01", "57P02", "57P03", "08006")


def _sqlstate(exc: BaseException) -> str | None:
    for item in exception_chain(exc):
        for arg in getattr(item, "args", ()):
            if isinstance(arg, dict) and "C" in arg:
                return str(arg["C"])
    return None


def wait_for_database(
    db: PostgresDatabase,
    timeout: float = DATABASE_BACK_SECONDS,
    log: Callable[[str], None] = lambda _m: None,
) -> float:
    """Return once ``db`` answers ``SELECT 1``, the seconds waited; raise the last failure
    after ``timeout``, or at once when it is not one a restart causes (a password, a missing
    role or database)."""
    started = time.monotonic()
    said = False
    while True:
        try:
            with connect(db) as conn:
                conn.execute(sa.text("SELECT 1"))
            return round(time.monotonic() - started, 1)
        except Exception as exc:
            # "shutting down"/"starting up" come as the driver's own error (a FATAL with
            # SQLSTATE 57P03), a refused or dropped socket as a DatabaseConnectionFailed.
            code = _sqlstate(exc)
            restarting = code in _RESTARTING if code else isinstance(exc, DatabaseConnectionFailed)
            if not restarting or time.monotonic() - started > timeout:
                raise
            if not said:
                log(
                    f"waiting up to {int(timeout)} s for PostgreSQL to take sessions: "
                    f"{database_error_message(exc)}"
                )
                said = True
            time.sleep(1)


#: What a client prints when its session died under it (a cut connection, a restart): libpq's
#: tools (pg_restore, psql), pg8000, PostgreSQL's own notice to the sessions it ends.
_LOST_PHRASES = (
    "server closed the connection unexpectedly",
    "network error",
    "terminating connection due to administrator command",
    "the database system is shutting down",
    "the database system is starting up",
    "connection refused",
)


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is a session lost to a restart or a cut (worth one more try of an
    undo, from the start), not a failing statement or a refusal.

    Why: an undo that lost its connection mid-restore (a network blip during its pg_restore)
    gave up and left the server down, although the set and the database were both fine
    (found by ``tests/test_injected_faults_e2e.py``: a migration failing, then its rollback's
    pg_restore cut). A restore from a set starts over cleanly, so one more try is safe."""
    code = _sqlstate(exc)
    if code is not None:
        return code in _RESTARTING
    if isinstance(exc, DatabaseConnectionFailed):
        return True
    text = " ".join(str(e) for e in exception_chain(exc)).lower()
    return any(phrase in text for phrase in _LOST_PHRASES)
