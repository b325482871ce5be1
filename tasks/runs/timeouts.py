"""How long a letta-ops flow, or one of its steps that can hang, may run before Prefect ends it.

Why: a ``pg_dump`` waiting on a lock, a migration on a dead connection, a server that never
becomes healthy would otherwise run forever, and a run that holds the server's destructive lock
(or a fleet's per-store slot) keeps renewing its lease while it hangs, so every later run is
refused as busy. Prefect's ``timeout_seconds`` ends such a run as ``TimedOut``; on the way out
the lock's context manager releases its lease and ``pg_dump``/``pg_restore`` are killed in the
``finally`` of the code that started them.

How Prefect enforces it (3.8): a sync flow or task on the main thread gets a ``SIGALRM`` that
interrupts even a blocking read; a task inside a flow that already has one gets only a watcher
thread, which cannot interrupt a blocking call and, when the flow's alarm fires, reports the
*task's* limit. So each hang is bounded once, at one level: the flows that run unattended
(backup, drill, restore, rehearsal, the maintenance jobs) carry a flow timeout and their steps
none; the upgrade, rollback and recover flows, whose runs wait for an operator's approval for as
long as it takes, carry none, and their steps that can hang (stop, migrate, restore, start with
its health wait) carry their own. Their safety backups are backup subflows, with the backup's.

The defaults are generous (a 5 GB dump took about 7 minutes on two cores); an operator with a
larger database raises one with ``LETTA_OPS_TIMEOUT_<NAME>`` (seconds) in the environment of the
process that imports the flows (the worker, or the shell running ``letta-ops``).
"""

from __future__ import annotations

import os

HOUR = 3600.0


def seconds(name: str, default: float) -> float:
    """``LETTA_OPS_TIMEOUT_<NAME>`` if set (a positive number of seconds), else ``default``."""
    raw = os.environ.get(f"LETTA_OPS_TIMEOUT_{name}")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(
            f"LETTA_OPS_TIMEOUT_{name}={raw!r} is not a positive number of seconds; unset it "
            f"for the default ({default:.0f} s)."
        )
    return value


# Flows that run unattended.
BACKUP = seconds("BACKUP", 6 * HOUR)
VERIFY = seconds("VERIFY", 6 * HOUR)
RESTORE = seconds("RESTORE", 8 * HOUR)
REHEARSE = seconds("REHEARSE", 8 * HOUR)
FLEET_BACKUP = seconds("FLEET_BACKUP", 24 * HOUR)
DOCTOR = seconds("DOCTOR", 0.5 * HOUR)
PRUNE = seconds("PRUNE", 2 * HOUR)
MAINTENANCE = seconds("MAINTENANCE", 4 * HOUR)  # sync-tools, cleanup, renames, sequences, agents
MOVE = seconds("MOVE", 8 * HOUR)  # move-to-postgres: schema, every row, counts, restart

# Steps that can hang in the flows without a flow timeout (upgrade, rollback, recover).
PG_RESTORE = seconds("PG_RESTORE", 8 * HOUR)
MIGRATE = seconds("MIGRATE", 2 * HOUR)
SERVER_STOP_START = seconds("SERVER_STOP_START", 0.5 * HOUR)  # includes the health wait

#: The variable that bounds each command's run, for the error sentence.
COMMAND_LIMITS = {
    "backup": "BACKUP",
    "verify": "VERIFY",
    "restore": "RESTORE",
    "fleet-backup": "FLEET_BACKUP",
    "doctor": "DOCTOR",
    "prune": "PRUNE",
    "sync-tools": "MAINTENANCE",
    "cleanup-sources": "MAINTENANCE",
    "rename-agents": "MAINTENANCE",
    "repair-sequences": "MAINTENANCE",
    "restore-agents": "MAINTENANCE",
    "export-agents": "MAINTENANCE",
    "import-agents": "MAINTENANCE",
    "move-to-postgres": "MOVE",
    "backups": "VERIFY",  # backups adopt: one restore into a scratch database, then verify
}
STEP_LIMITS = ("PG_RESTORE", "MIGRATE", "SERVER_STOP_START")


def is_run_timeout(exc: BaseException) -> bool:
    """A flow or task run Prefect ended at its ``timeout_seconds``."""
    return isinstance(exc, TimeoutError) and type(exc).__name__ in (
        "FlowRunTimeoutError",
        "TaskRunTimeoutError",
    )


def timeout_sentence(command: str | None, exc: BaseException) -> str:
    """One sentence for a run that timed out, naming the variable that raises its limit."""
    if command in COMMAND_LIMITS:
        knob = f"LETTA_OPS_TIMEOUT_{COMMAND_LIMITS[command]}"
    elif command == "upgrade" and "rehears" in str(exc).lower():
        knob = "LETTA_OPS_TIMEOUT_REHEARSE"
    else:
        knob = " or ".join(f"LETTA_OPS_TIMEOUT_{name}" for name in STEP_LIMITS)
    detail = str(exc).rstrip(".") or type(exc).__name__
    return (
        f"The {command or 'letta-ops'} run was stopped at its time limit ({detail}); what it "
        f"held is released and nothing it left half-written counts; if it needs longer, raise "
        f"{knob} (seconds)."
    )
