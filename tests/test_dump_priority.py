"""The backup's load bounds beside a live server: pg_dump at a lower CPU and I/O priority
(read from the running pg_dump itself, through psutil), and the export concurrency setting.
The bound on exports in flight is proven against a real server in tests/test_backup_e2e.py."""

from __future__ import annotations

import os
from typing import BinaryIO

import psutil
import pytest
import sqlalchemy as sa

from letta_ops.tasks.errors import Refused
from letta_ops.tasks.postgres.dump import dump_to_store
from letta_ops.tasks.postgres.dump_priority import LOW_NICENESS, chosen_dump_priority
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.sets.export_concurrency import chosen_export_concurrency
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.objects import StoredObject


class WatchedStore(LocalObjectStore):
    """A local store that, before it reads a byte of the dump, looks at the pg_dump this
    process is running: pg_dump cannot finish meanwhile (its output is larger than the pipe)."""

    seen: list[dict] = []

    def put_stream(self, key: str, stream: BinaryIO, *, progress=None) -> StoredObject:
        dumps = [p for p in psutil.Process().children() if p.name() == "pg_dump"]
        self.seen.extend(
            {
                "status": p.status(),
                "nice": p.nice(),
                "ioclass": p.ionice().ioclass,
            }
            for p in dumps
        )
        return super().put_stream(key, stream, progress=progress)


@pytest.fixture(scope="module")
def ballast_database(make_database):
    """A database whose uncompressed dump (~6 MiB) is larger than the widened 1 MiB pipe."""
    db = make_database("priority").model_copy(update={"extra_tables": ["ballast"]})
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE ballast (id int PRIMARY KEY, payload bytea)"))
        conn.execute(
            sa.text(
                "INSERT INTO ballast SELECT i, decode(repeat(md5(i::text), 2048), 'hex') "
                "FROM generate_series(1, 200) i"
            )
        )
    return db


def _dump_seen(db, tmp_path, priority: str) -> tuple[dict, list[str]]:
    store = WatchedStore(tmp_path / priority)
    store.seen = []
    result = dump_to_store(db, store, "database.dump", compression="none", priority=priority)
    assert result.stored.size > 4 * 1024 * 1024  # larger than the pipe: pg_dump was waiting
    [seen] = store.seen
    return seen, result.priority_notes


def test_pg_dump_runs_at_low_priority_by_default_and_as_started_when_normal(
    ballast_database, tmp_path
):
    own_nice = os.nice(0)
    assert own_nice < LOW_NICENESS  # else "lowered" could not be told from "inherited"
    low, notes = _dump_seen(ballast_database, tmp_path, "low")
    assert low["status"] != psutil.STATUS_ZOMBIE  # seen while it ran
    assert low["nice"] == LOW_NICENESS
    if notes:  # a host that refuses the idle I/O class says so, and only that
        assert all("I/O class" in n for n in notes), notes
    else:
        assert low["ioclass"] == psutil.IOPRIO_CLASS_IDLE
    normal, notes = _dump_seen(ballast_database, tmp_path, "normal")
    assert normal["nice"] == own_nice and normal["ioclass"] != psutil.IOPRIO_CLASS_IDLE
    assert notes == []


def test_priority_and_export_concurrency_choices():
    assert chosen_dump_priority(None, {}) == "low"
    assert chosen_dump_priority(None, {"LETTA_OPS_DUMP_PRIORITY": " Normal "}) == "normal"
    assert chosen_dump_priority("low", {"LETTA_OPS_DUMP_PRIORITY": "normal"}) == "low"
    with pytest.raises(Refused, match="not one of: low, normal"):
        chosen_dump_priority(None, {"LETTA_OPS_DUMP_PRIORITY": "idle"})
    assert chosen_export_concurrency(None, {}) == 1  # the measured default (bench/live_latency.py)
    assert chosen_export_concurrency(None, {"LETTA_OPS_EXPORT_CONCURRENCY": "2"}) == 2
    assert chosen_export_concurrency(8, {"LETTA_OPS_EXPORT_CONCURRENCY": "2"}) == 8
    for bad in ("0", "many", "65"):
        with pytest.raises(Refused, match="from 1 to 64"):
            chosen_export_concurrency(None, {"LETTA_OPS_EXPORT_CONCURRENCY": bad})
