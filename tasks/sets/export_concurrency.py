"""How many agent exports a backup keeps in flight against the live Letta server.

Why a bound an operator sets: every export is a request the server answers beside its users'
(it reads the agent, its blocks, tools and messages, and serialises them). On a small host
(two cores) a wide fan-out slows the users' requests; on a large one it shortens the backup.
``--concurrency`` wins, else ``LETTA_OPS_EXPORT_CONCURRENCY``, else
:data:`DEFAULT_EXPORT_CONCURRENCY`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import Refused

#: Exports in flight when nothing else is said. Measured (bench/live_latency.py, two cores,
#: Letta 0.16.2 with 25 agents of long history): the p95 of ``GET /v1/agents/{id}`` during a
#: backup over idle was 1.61x and 1.16x with 1 export in flight, 1.79x and 2.51x with 2,
#: 3.20x and 2.85x with 4 (the former default); the bound issue #32 sets is 2x, and only 1
#: kept it in every run. A larger host, or a server whose latency matters less than the
#: backup's length, raises it.
DEFAULT_EXPORT_CONCURRENCY = 1
#: More than this is refused: it only starves the server.
MAX_EXPORT_CONCURRENCY = 64


def chosen_export_concurrency(
    requested: int | None, environ: Mapping[str, str] | None = None
) -> int:
    """The run's bound, else ``LETTA_OPS_EXPORT_CONCURRENCY``, else the default: 1-64."""
    env = os.environ if environ is None else environ
    value: object = requested
    if value is None:
        value = env.get("LETTA_OPS_EXPORT_CONCURRENCY") or DEFAULT_EXPORT_CONCURRENCY
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_EXPORT_CONCURRENCY:
        raise Refused(
            f"Export concurrency {value!r} must be a whole number from 1 to "
            f"{MAX_EXPORT_CONCURRENCY}."
        )
    return number
