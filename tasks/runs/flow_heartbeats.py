"""letta-ops' flow runs send no Prefect heartbeats unless the operator asks for them.

Why: Prefect 3 gives every flow run a thread that emits a heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default) and sleeps in one-second steps
between them; the end of every flow run joins that thread, so each run (each command, each
subflow) waited up to a second after its work was done: 0.98-1.0 s of every short command,
measured against a Prefect server on loopback (issue #32, the fixed costs). letta-ops does not
need them: an interrupted destructive run is found by its own journal (``letta-ops recover``),
and a command's flow run ends with its process. An operator whose Prefect automations watch
heartbeats sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` and gets them exactly as before.

Applied when the flows are imported (importing them is how anything comes to run them: the
command line, a served deployment's run, a test), for the importing thread: where flows run.
"""

from __future__ import annotations

import contextlib
import os

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"

#: The settings applied, held for the life of the process (never closed); None: not yet.
_applied: contextlib.ExitStack | None = None


def without_flow_heartbeats() -> bool:
    """Turn the heartbeats off (once) unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set;
    returns whether it did. Prefect's settings are read once, when Prefect is imported, so
    the setting applies on top of those (the API URL included)."""
    global _applied
    if os.environ.get(HEARTBEAT_ENV) or _applied is not None:
        return False
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    _applied = contextlib.ExitStack()
    _applied.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
    return True
