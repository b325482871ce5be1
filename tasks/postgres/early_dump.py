"""A backup's pg_dump, started by the command before Prefect is imported.

Why (issue #32): a cold ``letta-ops backup`` spends 1.5-2.5 s importing Prefect and the flow,
creating the flow run, loading the server and asking it for its version and agents before the
dump starts, and the dump is the backup's long pole. So the command starts the dump first, in
a thread, from the configuration the run will load too (the environment: ``LETTA_PG_URI`` and
the rest, :meth:`PostgresDatabase.from_env`), and the run's dump step takes it over.

Why that is safe: the run takes it over only if it is the very dump the run would have
started: the same database settings, compression and priority, and a snapshot at the alembic
revision the run's pre-flight read (an upgrade in between would make them differ). Anything
else, and the early dump is stopped and the run dumps as before. Nothing reaches the store
before the run takes it over: the output waits in memory (at most ``EARLY_SPOOL_BYTES``;
pg_dump waits beyond that; once the run reads it, as little as any dump's), and a command
that ends without taking it stops it (:func:`drop_early_dump`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the thread: the command goes on importing Prefect meanwhile
    from .database import PostgresDatabase
    from .dump import StartedDump

log = logging.getLogger(__name__)


@dataclass
class _EarlyStart:
    """What the thread starting the dump started (None: it could not), once ``done``."""

    started: StartedDump | None = None
    why_not: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    #: No run will take it: the thread stops what it started when it gets there.
    abandoned: bool = False


_pending: _EarlyStart | None = None
_lock = threading.Lock()


def start_early_dump(
    compression: str | None,
    priority: str | None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Start, in a thread, the dump a backup of the server configured in ``environ`` will
    take (``compression`` and ``priority`` as the command was given them). False, and nothing
    started, when the server is not configured by the environment alone: a SQLite server, or
    no ``LETTA_PG_URI`` (saved blocks are read by the run, after Prefect is imported)."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("LETTA_PG_URI") or env.get("LETTA_OPS_SQLITE_DB"):
        return False
    global _pending
    with _lock:
        if _pending is not None:
            return False
        _pending = early = _EarlyStart()
    threading.Thread(
        target=_start, args=(early, env, compression, priority), name="early-dump", daemon=True
    ).start()
    return True


def _start(
    early: _EarlyStart, env: dict[str, str], compression: str | None, priority: str | None
) -> None:
    try:
        from .database import PostgresDatabase
        from .dump import EARLY_SPOOL_BYTES, start_dump
        from .dump_compression import chosen_compression
        from .dump_priority import chosen_dump_priority

        db = PostgresDatabase.from_env(env)
        early.started = start_dump(
            db,
            chosen_compression(compression, db.compression, env),
            chosen_dump_priority(priority, env),
            spool_bytes=EARLY_SPOOL_BYTES,
        )
    except Exception as exc:  # the run meets the same cause and says it in its own words
        early.why_not = type(exc).__name__
    finally:
        with _lock:
            early.done.set()
            abandoned = early.abandoned
        if abandoned and early.started is not None:
            early.started.stop()


def take_early_dump(
    db: PostgresDatabase, compression: str, priority: str, alembic_revision: str | None
) -> StartedDump | None:
    """The dump the command started, if it is the one this run needs (see the module); else
    None, the early one stopped. A run takes it at most once."""
    global _pending
    with _lock:
        early, _pending = _pending, None
    if early is None:
        return None
    early.done.wait()
    started = early.started
    if started is None:
        log.debug("no dump started before the run (%s)", early.why_not)
        return None
    differs = _difference(started, db, compression, priority, alembic_revision)
    if differs:
        log.info("The dump started before the run is not this run's (%s): dumping anew.", differs)
        started.stop()
        return None
    return started


def drop_early_dump() -> None:
    """Stop the dump the command started if no run took it (the run failed before its dump,
    or was never the kind that dumps): its pg_dump, counts and transaction end here, or, when
    it is still starting (waiting for a lock the database holds), as soon as it has started:
    a command never waits for it."""
    global _pending
    with _lock:
        early, _pending = _pending, None
        if early is None:
            return
        early.abandoned = True
        started = early.started if early.done.is_set() else None
    if started is not None:
        started.stop()


def _difference(
    started: StartedDump,
    db: PostgresDatabase,
    compression: str,
    priority: str,
    alembic_revision: str | None,
) -> str:
    """What makes ``started`` another dump than the run's, in words without secrets ("": none)."""
    from .database import PostgresDatabase

    for name in PostgresDatabase.model_fields:
        if _plain(getattr(started.database, name)) != _plain(getattr(db, name)):
            return f"the database setting {name} differs"
    if started.compression != compression:
        return f"compression {started.compression} instead of {compression}"
    if started.priority != priority:
        return f"priority {started.priority} instead of {priority}"
    if started.alembic_revision != alembic_revision:
        return (
            f"its snapshot is at alembic revision {started.alembic_revision}, the server at "
            f"{alembic_revision}"
        )
    return ""


def _plain(value: object) -> object:
    from pydantic import SecretStr

    return value.get_secret_value() if isinstance(value, SecretStr) else value
