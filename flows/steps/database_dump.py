"""The backup's dump step: pg_dump into the set, with the row counts in its snapshot.

Why a step of its own: the dump may already be running when the run reaches it (the command
started it before importing Prefect, :mod:`letta_ops.tasks.postgres.early_dump`); taking it
over, or dumping anew, and timing the part before the run as a phase of its own, is the step's
business, and the backup flow keeps reading like its runbook.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from ...blocks.server_profile import ServerProfile
from ...tasks.errors import database_error_message
from ...tasks.postgres.client_tools import PgToolError
from ...tasks.postgres.dump import DumpResult, dump_to_store
from ...tasks.postgres.early_dump import take_early_dump
from ...tasks.runs import progress_events
from ...tasks.runs.phase_timings import PhaseClock
from ...tasks.store.objects import ObjectStore

#: The phase of a dump the command started before the run: until the run took it over.
EARLY_DUMP_PHASE = "dump before the run"


def dump_failure(exc: BaseException) -> str:
    """pg_dump's own cause when the dump failed; the connection dying with it comes second."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, PgToolError):
            return str(current)
        current = current.__context__
    return database_error_message(exc)


@task(name="dump-database", cache_policy=NO_CACHE)
def dump_database_task(
    profile: ServerProfile,
    store: ObjectStore,
    key: str,
    compression: str,
    priority: str = "low",
    alembic_revision: str | None = None,
    clock: PhaseClock | None = None,
) -> DumpResult:
    """The dump into the set; the one the command started before the run if it is this run's
    (:mod:`letta_ops.tasks.postgres.early_dump`), timed as its own phase."""
    database = profile.require_database()
    early = take_early_dump(database, compression, priority, alembic_revision)
    if early is not None and clock is not None:
        waited = time.monotonic() - early.started_monotonic
        clock.record(EARLY_DUMP_PHASE, early.started_at, early.started_monotonic, waited)
    progress = progress_events.reporter()
    progress.start("upload pg_dump", None, "bytes")
    try:
        return dump_to_store(
            database,
            store,
            key,
            progress=lambda n: progress.advance("upload pg_dump", n),
            compression=compression,
            priority=priority,
            started=early,
        )
    finally:
        progress.finish("upload pg_dump")
