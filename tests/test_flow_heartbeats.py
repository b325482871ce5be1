"""Importing the flows turns Prefect's per-run heartbeat thread off, unless the operator set
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (letta_ops.tasks.runs.flow_heartbeats). Each case is a
fresh interpreter: the setting is taken once per process, when the flows are imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import prefect.settings as s; before = s.get_current_settings().flows.heartbeat_frequency; "
    "import letta_ops.flows; "
    "print(before, s.get_current_settings().flows.heartbeat_frequency)"
)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [(None, "180 None"), ("60", "60 60")],
    ids=["not-set-off", "operator-set-kept"],
)
def test_heartbeats_off_unless_the_operator_sets_them(asked, expected):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"}
    if asked is not None:
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = asked
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[0] == expected
