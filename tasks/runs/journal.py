"""The step journal of a destructive run: where it stopped, written before each step begins.

Why: a destructive run (upgrade, rollback, restore) can die at any instant: ``kill -9`` of a
worker, a host that loses power. Prefect then shows a run stuck in Running and the audit
record says ``running`` forever. The journal says exactly how far the run got: a ``begin``
entry with what an undo needs (the pre-operation backup set, the versions, the strategy, how
the database is emptied), then the ``start`` and ``end`` of every step, each with the run id,
host and pid, and a ``finish`` entry. A run with a ``begin`` and no ``finish`` was
interrupted; ``letta-ops recover`` reads its journal to take the one safe way out.

Entries go to the audit store (the table ``journal_entries``; always) and beside the run's
backup set in the object store (``SERVER/SET_ID/journal/RUN/NNNN-EVENT.json``, write-once,
best effort), so they survive the loss of either.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy import JSON, Column, DateTime, Integer, String, Table, insert, select

from ..audit.store import AuditStore, metadata
from ..store.objects import ObjectStore

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(80), nullable=False, index=True),
    Column("server", String(80), nullable=False, index=True),
    Column("operation", String(40), nullable=False),
    Column("step", String(200), nullable=False),
    Column("event", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("details", JSON),
)

BEGIN, START, END, FINISH = "begin", "start", "end", "finish"

log = logging.getLogger("letta_ops.journal")


class JournalUnavailable(RuntimeError):
    """The journal could not be written before a destructive step; nothing was changed."""


@dataclass(frozen=True)
class JournalEntry:
    run_id: str
    server: str
    operation: str
    step: str
    event: str
    at: datetime
    host: str
    pid: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {**self.__dict__, "at": self.at.isoformat()}
        return json.dumps(data, indent=2, sort_keys=True).encode()


@dataclass
class RunJournal:
    """The journal of one run. ``begin`` must succeed before the first destructive step;
    later writes that fail are logged (the run goes on: stopping half way is worse)."""

    run_id: str
    server: str
    operation: str
    store: AuditStore
    object_store: ObjectStore | None = None
    set_prefix: str | None = None
    current: str | None = None
    written: int = 0

    def begin(self, **details: Any) -> None:
        try:
            self._write(BEGIN, "begin", details, required=True)
        except Exception as exc:
            raise JournalUnavailable(
                f"The step journal could not be written to the audit store "
                f"({self.store.describe()}): {exc}; nothing was changed. Fix the store "
                "(LETTA_OPS_AUDIT_URL) and run again."
            ) from exc

    def enter(self, step: str, **details: Any) -> None:
        """Close the step running now (if any) and start ``step``."""
        if self.current is not None:
            self._write(END, self.current, {})
        self.current = step
        self._write(START, step, details)

    def finish(self, outcome: str, **details: Any) -> None:
        if self.current is not None:
            self._write(END, self.current, {})
            self.current = None
        self._write(FINISH, outcome, details)

    def _write(self, event: str, step: str, details: dict, required: bool = False) -> None:
        entry = JournalEntry(
            run_id=self.run_id,
            server=self.server,
            operation=self.operation,
            step=step,
            event=event,
            at=datetime.now(UTC),
            host=socket.gethostname(),
            pid=os.getpid(),
            details=details,
        )
        try:
            with self.store.engine.begin() as conn:
                conn.execute(insert(journal_entries).values(**entry.__dict__))
        except Exception as exc:
            if required:
                raise
            log.warning("journal: could not record %s %s: %s", event, step, exc)
        self.written += 1
        if self.object_store is not None and self.set_prefix:
            key = f"{self.set_prefix}journal/{self.run_id}/{self.written:04d}-{event}.json"
            try:
                self.object_store.put_bytes(key, entry.to_json())
            except Exception as exc:  # noqa: BLE001 - the audit store holds it too
                log.warning("journal: could not copy %s %s beside the set: %s", event, step, exc)


class JournaledSteps:
    """Mixin of a destructive flow's state: the step running now, journaled as it begins
    (so a failure names its step, and a crash leaves where it stopped)."""

    step: str = "pre-flight"
    journal: RunJournal | None = None

    def enter(self, step: str, **details: Any) -> None:
        self.step = step
        self.__dict__.setdefault("entered", []).append((step, time.monotonic()))
        if self.journal is not None:
            self.journal.enter(step, **details)

    def step_seconds(self) -> list[dict[str, Any]]:
        """How long each step took, in order (the last one up to now): a rehearsal's
        measurements, and a report's."""
        entered = self.__dict__.get("entered", [])
        if not entered:
            return []
        ends = [t for _, t in entered[1:]] + [time.monotonic()]
        return [
            {"step": step, "seconds": round(end - start, 1)}
            for (step, start), end in zip(entered, ends, strict=True)
        ]


def read_journal(store: AuditStore, run_id: str) -> list[JournalEntry]:
    """Every entry of ``run_id``, oldest first."""
    stmt = (
        select(journal_entries)
        .where(journal_entries.c.run_id == run_id)
        .order_by(journal_entries.c.entry_id)
    )
    with store.engine.connect() as conn:
        return [_entry(row._mapping) for row in conn.execute(stmt)]


def unfinished_runs(store: AuditStore, server: str) -> list[list[JournalEntry]]:
    """Journals of ``server``'s runs that began and never finished, newest first."""
    c = journal_entries.c
    stmt = select(c.run_id).where(c.server == server, c.event == BEGIN).order_by(c.entry_id.desc())
    with store.engine.connect() as conn:
        run_ids = list(dict.fromkeys(r[0] for r in conn.execute(stmt)))
    journals = [read_journal(store, run_id) for run_id in run_ids]
    return [j for j in journals if not any(e.event == FINISH for e in j)]


def close_unfinished(store: AuditStore, server: str, outcome: str) -> list[str]:
    """Finish every unfinished journal of ``server`` with ``outcome`` (a later run made them
    moot, e.g. a restore redone onto the same database); returns their run ids."""
    closed = []
    for journal in unfinished_runs(store, server):
        first = journal[0]
        RunJournal(first.run_id, first.server, first.operation, store).finish(outcome)
        closed.append(first.run_id)
    return closed


def _entry(row: Any) -> JournalEntry:
    at = row["at"]
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return JournalEntry(
        run_id=row["run_id"],
        server=row["server"],
        operation=row["operation"],
        step=row["step"],
        event=row["event"],
        at=at,
        host=row["host"],
        pid=row["pid"],
        details=row["details"] or {},
    )


# --------------------------------------------------------------------------- reading a journal


def begun(journal: list[JournalEntry]) -> dict[str, Any]:
    """The facts the run recorded when it began (pre-operation set, versions, ...)."""
    return next((e.details for e in journal if e.event == BEGIN), {})


def last_step(journal: list[JournalEntry]) -> tuple[str | None, bool]:
    """The last step the run started, and whether it ended."""
    started = [e for e in journal if e.event == START]
    if not started:
        return None, False
    step = started[-1].step
    ended = any(e.event == END and e.step == step for e in journal[journal.index(started[-1]) :])
    return step, ended


def noted(journal: list[JournalEntry], key: str) -> Any:
    """The newest value a step recorded under ``key`` as it began (a checksum taken on the
    way), or the begin entry's; None when no entry has it."""
    for entry in reversed(journal):
        if key in entry.details:
            return entry.details[key]
    return None


def steps_ended(journal: list[JournalEntry]) -> list[str]:
    return [e.step for e in journal if e.event == END]


def process_alive(host: str, pid: int, since: datetime | None = None) -> bool | None:
    """Whether the process that wrote a journal still runs: True/False on this host (a pid
    reused by a process started after ``since`` counts as gone), None for another host."""
    if host != socket.gethostname():
        return None
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return False
    if since is not None and process.create_time() > since.timestamp() + 1:
        return False
    return process.status() != psutil.STATUS_ZOMBIE
