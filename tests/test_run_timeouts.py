"""Run limits: the operator's knob and the sentence that names it."""

from __future__ import annotations

import pytest

from letta_ops.flows.backup import backup
from letta_ops.flows.rollback import rollback
from letta_ops.flows.steps.upgrade_steps import migrate_step
from letta_ops.tasks.runs import timeouts as run_timeouts


def test_a_variable_overrides_the_default(monkeypatch) -> None:
    monkeypatch.setenv("LETTA_OPS_TIMEOUT_BACKUP", "90")
    assert run_timeouts.seconds("BACKUP", 5.0) == 90.0
    monkeypatch.delenv("LETTA_OPS_TIMEOUT_BACKUP")
    assert run_timeouts.seconds("BACKUP", 5.0) == 5.0


@pytest.mark.parametrize("raw", ["0", "-3", "an hour"])
def test_a_bad_value_is_refused_in_one_sentence(monkeypatch, raw) -> None:
    monkeypatch.setenv("LETTA_OPS_TIMEOUT_DUMP", raw)
    with pytest.raises(ValueError, match="LETTA_OPS_TIMEOUT_DUMP=.* is not a positive number"):
        run_timeouts.seconds("DUMP", 5.0)


def test_unattended_flows_are_bounded_and_approval_flows_bound_their_steps() -> None:
    assert backup.timeout_seconds == run_timeouts.BACKUP
    assert rollback.timeout_seconds is None  # it may wait for an approval for days
    assert migrate_step.timeout_seconds == run_timeouts.MIGRATE


def test_the_sentence_names_the_variable() -> None:
    class FlowRunTimeoutError(TimeoutError):
        pass

    exc = FlowRunTimeoutError("Scope timed out after 15.0 second(s).")
    assert run_timeouts.is_run_timeout(exc) and not run_timeouts.is_run_timeout(TimeoutError())
    line = run_timeouts.timeout_sentence("backup", exc)
    assert "LETTA_OPS_TIMEOUT_BACKUP" in line and "\n" not in line
    assert "LETTA_OPS_TIMEOUT_MIGRATE" in run_timeouts.timeout_sentence("upgrade", exc)
