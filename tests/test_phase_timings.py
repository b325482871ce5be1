"""The phase recorder every report's ``phases`` come from: phases in the order they started,
with a UTC start and non-negative seconds, a failing phase recorded too, phases from threads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from letta_ops.cli.output import phases_lines
from letta_ops.tasks.runs.phase_timings import PhaseClock, PhaseTiming, phases_markdown


def test_phases_are_recorded_in_order_with_a_utc_start_and_monotonic_seconds():
    clock = PhaseClock()
    before = datetime.now(UTC)
    with clock.phase("start-up"):
        pass
    with clock.phase("dump+upload"):
        pass
    timings = clock.timings()
    assert [t.name for t in timings] == ["start-up", "dump+upload"]
    assert all(t.seconds >= 0 for t in timings)
    assert all(t.started_at.utcoffset() == timedelta(0) for t in timings)
    assert before <= timings[0].started_at <= timings[1].started_at <= datetime.now(UTC)


def test_seconds_come_from_the_monotonic_clock_not_the_wall_clock():
    ticks = iter([10.0, 12.5, 12.5, 11.0])  # a monotonic clock never goes back; a fake may
    clock = PhaseClock(monotonic=lambda: next(ticks))
    with clock.phase("export"):
        pass
    with clock.phase("manifest"):
        pass
    assert [t.seconds for t in clock.timings()] == [2.5, 0.0]


def test_a_failing_phase_is_still_recorded_and_the_error_goes_on():
    clock = PhaseClock()
    with pytest.raises(RuntimeError, match="pg_dump"), clock.phase("dump+upload"):
        raise RuntimeError("pg_dump died")
    assert [t.name for t in clock.timings()] == ["dump+upload"]


def test_phases_overlapping_in_threads_are_ordered_by_their_start():
    clock = PhaseClock()
    export_started, dump_done = threading.Event(), threading.Event()

    def export() -> None:
        with clock.phase("export"):
            export_started.set()
            dump_done.wait(5)

    worker = threading.Thread(target=export)
    worker.start()
    export_started.wait(5)
    with clock.phase("dump+upload"):
        pass
    dump_done.set()
    worker.join(5)
    assert [t.name for t in clock.timings()] == ["export", "dump+upload"]


def test_text_and_markdown_say_each_phase_and_nothing_without_phases():
    at = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    phases = [
        PhaseTiming(name="start-up", started_at=at, seconds=0.42),
        PhaseTiming(name="verification", started_at=at, seconds=3.05),
    ]
    assert phases_lines(phases) == ["phases: start-up 0.4 s, verification 3.0 s"]
    markdown = "\n".join(phases_markdown(phases))
    assert "| verification | 2026-11-23T02:15:00+00:00 | 3.0 |" in markdown
    assert phases_lines([]) == [] and phases_markdown([]) == []
    assert PhaseTiming.model_validate(phases[0].model_dump(mode="json")) == phases[0]


def test_a_drill_times_each_step_and_drops_its_scratch_database_after_a_failure(monkeypatch):
    """The drill's steps in order, with PostgreSQL and the store stood in for: the scratch
    database's drop is timed after the failing restore too."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from letta_ops.tasks.sets import verification

    dropped = []
    monkeypatch.setattr(verification, "dump_head", lambda store, manifest: nullcontext("head"))
    monkeypatch.setattr(verification, "probe_privileges", lambda target: "facts")
    monkeypatch.setattr(verification, "recreate_blockers", lambda facts: [])
    monkeypatch.setattr(verification, "create_database", lambda db, **kw: None)
    monkeypatch.setattr(verification, "drop_database", dropped.append)
    monkeypatch.setattr(verification, "table_row_counts", lambda db, tables: dict(tables))
    target = SimpleNamespace(for_database=lambda name: SimpleNamespace(database_name=name))
    manifest = SimpleNamespace(pgvector_schema=None, row_counts={"agents": 3}, db_schema="public")

    clock = PhaseClock()
    monkeypatch.setattr(verification, "restore_set_dump", lambda *a: ["a warning"])
    result = verification.drill(None, manifest, target, phase=clock.phase)
    assert result["differences"] == [] and result["restore_warnings"] == ["a warning"]
    assert [t.name for t in clock.timings()] == [
        "dump head", "scratch database", "stream restore", "counts", "drop scratch database",
    ]  # fmt: skip

    def broken(*_args):
        raise RuntimeError("pg_restore died")

    clock = PhaseClock()
    monkeypatch.setattr(verification, "restore_set_dump", broken)
    with pytest.raises(RuntimeError, match="pg_restore died"):
        verification.drill(None, manifest, target, phase=clock.phase)
    assert [t.name for t in clock.timings()] == [
        "dump head", "scratch database", "stream restore", "drop scratch database",
    ]  # fmt: skip
    assert len(dropped) == 2


def test_laps_end_where_the_next_begins_and_stop_ends_the_last():
    """A flow that marks where each step begins (upgrade's ``state.enter``) laps the clock:
    each lap ends when the next starts, ``stop`` ends the running one, and a lap may follow
    a stop (nothing between them is counted)."""
    ticks = iter([0.0, 1.5, 4.0, 10.0, 10.5, 11.0])
    walls = iter(datetime(2026, 12, 7, 14, 0, s, tzinfo=UTC) for s in (0, 1, 10))
    clock = PhaseClock(monotonic=lambda: next(ticks), now=lambda: next(walls))
    clock.lap("pre-flight")  # 0.0
    clock.lap("backup")  # 1.5
    clock.stop()  # 4.0
    clock.lap("stop server")  # 10.0
    clock.stop()  # 10.5
    clock.stop()  # nothing running: nothing recorded
    timings = clock.timings()
    assert [(t.name, t.seconds) for t in timings] == [
        ("pre-flight", 1.5),
        ("backup", 2.5),
        ("stop server", 0.5),
    ]
    assert [t.started_at.second for t in timings] == [0, 1, 10]


def test_timed_steps_journal_each_step_and_lap_the_clock():
    from letta_ops.tasks.runs.timed_steps import TimedSteps

    class Steps(TimedSteps):
        def __init__(self, clock: PhaseClock) -> None:
            self.clock = clock

    clock = PhaseClock()
    clock.lap("backup")
    steps = Steps(clock)
    steps.enter("stop server")
    steps.enter("start 0.16.2")
    clock.stop()
    assert steps.step == "start 0.16.2"
    assert [s["step"] for s in steps.step_seconds()] == ["stop server", "start 0.16.2"]
    assert [t.name for t in clock.timings()] == ["backup", "stop server", "start 0.16.2"]
