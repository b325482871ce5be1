"""How hard a backup's pg_dump may push the host it shares with the live Letta server.

Why: the nightly backup runs beside a server that is answering its users. pg_dump compresses
on the CPU and reads every table; on a small host (two cores) it competes with the server's
own requests. ``low`` (the default) runs pg_dump at niceness 10 and in the idle I/O class
(``ionice -c3``): it takes what the server leaves, so the server's latency stays close to idle
while the dump takes a little longer only when the host is busy. ``normal`` leaves pg_dump as
it is (a dedicated backup host, or a window nobody uses).

Why after the start and through psutil, not ``nice``/``ionice`` in the argv: the same code
says what it could not do. Raising one's own child's niceness is always allowed; the idle I/O
class can be refused (some container runtimes, kernels without an I/O scheduler that honours
it): the backup then says so in its log and goes on. Tools run inside a Docker Compose service
(``docker compose exec``) are not children of this host's process tree: their priority is
the container's, and the log says that too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

from ..errors import Refused

#: ``low``: niceness 10 and the idle I/O class; ``normal``: as started.
DUMP_PRIORITIES = ("low", "normal")
DEFAULT_DUMP_PRIORITY = "low"
#: The niceness ``low`` asks for (nice(1)'s default increment).
LOW_NICENESS = 10


def parse_dump_priority(value: str | None) -> str:
    """``low`` or ``normal`` (any case); refused otherwise."""
    text = (value or DEFAULT_DUMP_PRIORITY).strip().lower()
    if text not in DUMP_PRIORITIES:
        raise Refused(f"Dump priority {value!r} is not one of: {', '.join(DUMP_PRIORITIES)}.")
    return text


def chosen_dump_priority(requested: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The run's choice, else ``LETTA_OPS_DUMP_PRIORITY``, else ``low``."""
    env = os.environ if environ is None else environ
    return parse_dump_priority(requested or env.get("LETTA_OPS_DUMP_PRIORITY"))


def lower_priority(pid: int, priority: str) -> list[str]:
    """Put the process ``pid`` (a pg_dump this process started) at ``priority``; returns what
    could not be done, one sentence each (empty: all of it was)."""
    if parse_dump_priority(priority) == "normal":
        return []
    missing: list[str] = []
    try:
        child = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []  # it has finished already: nothing left to slow down
    try:
        if child.nice() < LOW_NICENESS:
            child.nice(LOW_NICENESS)
    except (psutil.Error, OSError) as exc:
        missing.append(f"pg_dump's niceness could not be raised to {LOW_NICENESS} ({exc})")
    try:
        child.ionice(psutil.IOPRIO_CLASS_IDLE)
    except (psutil.Error, OSError, AttributeError, ValueError) as exc:
        # AttributeError: a platform without I/O classes (psutil has no ionice there).
        missing.append(f"pg_dump's I/O class could not be set to idle (ionice -c3): {exc}")
    return missing
