"""Exit codes, and the one place an exception becomes one (restic's scripting contract).

| code | meaning | raised as |
|---|---|---|
| 0 | done | |
| 1 | the operation ran and failed | ``Failed``, and any error of no letta-ops kind |
| 2 | refused: bad input, configuration or privilege; nothing changed | ``Refused`` |
| 3 | the check ran and something needs action | ``NeedsAction`` |
| 11 | busy: another destructive run holds the server | ``Busy`` |
| 130 | interrupted | ``KeyboardInterrupt`` |

The classes are :mod:`letta_ops.tasks.errors`'. A bare ``ValueError`` (pydantic's
``ValidationError`` included, unless a validator raised a ``Refused``) is exit 1: raised inside a
run, it does not mean "nothing changed". A command returns a code itself only after printing its
report (doctor's 3, a partial sync's 1); every other failure is an exception mapped here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..tasks.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_ACTION,
    EXIT_OK,
    Busy,
    Failed,
    LettaOpsError,
    NeedsAction,
    Refused,
    database_error_message,
    validation_sentence,
    wrapped_error,
)
from ..tasks.store.s3_errors import unreachable_store_sentence

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NEEDS_ACTION",
    "EXIT_OK",
    "Busy",
    "Failed",
    "LettaOpsError",
    "NeedsAction",
    "Refused",
    "error_sentence",
    "exit_code_for",
    "report_failure",
]


def exit_code_for(exc: BaseException) -> int:
    """The exit code of ``exc``: its letta-ops class says which; anything else is 1."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, LettaOpsError):
        return exc.exit_code
    wrapped = wrapped_error(exc)  # a validator that raised one of ours (e.g. Refused)
    if wrapped is not None:
        return wrapped.exit_code
    return EXIT_FAILED


def error_sentence(exc: BaseException) -> str:
    """One readable line for the operator (pydantic's multi-line errors included)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if type(exc).__name__ == "ValidationError" and callable(getattr(exc, "errors", None)):
        return validation_sentence(exc)
    unreachable = unreachable_store_sentence(exc)
    if unreachable is not None:
        return unreachable
    return database_error_message(exc)


def report_failure(as_json: bool, message: str, code: int) -> int:
    """One sentence on stderr; with ``--json`` also ``{"error", "exit_code"}`` on stdout, so a
    script reading stdout learns of the failure too. Returns ``code``."""
    print(f"letta-ops: error: {message}", file=sys.stderr)
    if as_json:
        failure: dict[str, Any] = {"error": message, "exit_code": code}
        print(json.dumps(failure))
    return code
