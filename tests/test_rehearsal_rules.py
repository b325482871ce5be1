"""What a rehearsal reports and when plans trust it: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from letta_ops.flows.rehearse import downtime_steps, notable_lines
from letta_ops.tasks.audit.rehearsal_history import rehearsal_is_current
from letta_ops.tasks.runs.journal import JournaledSteps


def test_downtime_is_from_the_stop_to_the_verification() -> None:
    steps = [
        {"step": "export agent files", "seconds": 4.0},
        {"step": "stop server", "seconds": 1.0},
        {"step": "alembic upgrade to 0.16.2", "seconds": 18.0},
        {"step": "start 0.16.2", "seconds": 40.0},
        {"step": "verify", "seconds": 2.0},
    ]
    assert [s["step"] for s in downtime_steps(steps)] == [
        "stop server",
        "alembic upgrade to 0.16.2",
        "start 0.16.2",
    ]
    assert downtime_steps(steps[:1]) == []  # stopped before the stop: no downtime


def test_steps_are_timed_in_order() -> None:
    state = JournaledSteps()
    for step in ("a", "b", "c"):
        state.enter(step)
    timed = state.step_seconds()
    assert [t["step"] for t in timed] == ["a", "b", "c"]
    assert all(t["seconds"] >= 0 for t in timed)
    assert JournaledSteps().step_seconds() == []  # never entered: nothing shared between runs


def test_notable_lines_and_currency() -> None:
    log = "INFO  started\nWARNING: pool size\nDeprecationWarning: x is old\nERROR boom\nok"
    assert notable_lines(log) == [
        "WARNING: pool size",
        "DeprecationWarning: x is old",
        "ERROR boom",
    ]
    now = datetime.now(UTC)
    rehearsal = {"at": now.isoformat()}
    assert rehearsal_is_current(rehearsal, now - timedelta(hours=1))
    assert not rehearsal_is_current(rehearsal, now + timedelta(hours=1))  # a newer backup
    assert not rehearsal_is_current(None, None)
    assert rehearsal_is_current(rehearsal, None)
