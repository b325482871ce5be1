"""The one error hierarchy of letta-ops, and the exit code of each kind.

Why: a script driving ``letta-ops`` must tell "you asked for something impossible, nothing
changed" from "it ran and failed" from "another run holds the server" from "it checked and
something needs you". Each exception says which it is by its class; the command line maps the
class to the exit code in one place (:func:`letta_ops.cli.errors.exit_code_for`), as restic does.

| class | exit code | meaning |
|---|---|---|
| :class:`Refused` | 2 | bad input, configuration or privilege; nothing was changed |
| :class:`Failed` | 1 | the operation ran and failed (the message says what state it left) |
| :class:`Busy` | 11 | another destructive run holds the server |
| :class:`NeedsAction` | 3 | the check ran and something needs the operator |

Anything else that escapes is exit 1 -- a bare ``ValueError`` too: raised deep inside a run,
it says nothing about whether something changed. A pydantic ``ValidationError`` is a refusal
only when a validator raised one of these (its ``ctx["error"]``); configuration that fails
validation is turned into a refusal where it is read (``letta_ops.blocks.server_profile``).

This module imports nothing heavy: the command line loads it for ``--help``.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NEEDS_ACTION = 0, 1, 2, 3
EXIT_BUSY = 11
EXIT_INTERRUPTED = 130


class LettaOpsError(Exception):
    """Root of every error letta-ops raises on purpose."""

    exit_code = EXIT_FAILED


class Refused(LettaOpsError, ValueError):
    """Bad input, configuration or privilege, found before anything changed."""

    exit_code = EXIT_BAD_INPUT


class Failed(LettaOpsError, RuntimeError):
    """The operation ran and failed."""

    exit_code = EXIT_FAILED


class Busy(LettaOpsError, RuntimeError):
    """Another destructive run holds the server."""

    exit_code = EXIT_BUSY


class NeedsAction(LettaOpsError, RuntimeError):
    """The check ran and found something the operator must do."""

    exit_code = EXIT_NEEDS_ACTION


def final_error_line(output: str) -> str:
    """The line that says what went wrong: after a Python traceback, its exception line (the
    first unindented line after the last ``Traceback``); else the last non-empty line."""
    lines = [line for line in output.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if not line.startswith((" ", "\t")):
                return line.strip()
    return lines[-1].strip() if lines else "(no output)"


def database_error_message(exc: BaseException) -> str:
    """PostgreSQL's own sentence (and hint) from a driver error, not the driver's dict.

    pg8000 carries the server's error fields as a dict (``M`` message, ``H`` hint); other
    exceptions are described by their first line. A letta-ops error already says it for the
    operator (a failed connection names host, port, reason and fix): its own sentence wins
    over the driver's error it was raised from.
    """
    if isinstance(exc, LettaOpsError):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    current: BaseException | None = exc
    while current is not None:
        for arg in getattr(current, "args", ()):
            if isinstance(arg, dict) and "M" in arg:
                hint = f" ({arg['H']})" if arg.get("H") else ""
                return f"PostgreSQL: {arg['M']}{hint}"
        current = getattr(current, "orig", None) or current.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def wrapped_error(exc: BaseException) -> LettaOpsError | None:
    """The letta-ops error a pydantic ``ValidationError`` carries: the first one a validator
    raised (``RetentionPolicy`` refusing a policy that keeps nothing), else None."""
    errors = getattr(exc, "errors", None)
    if not callable(errors) or type(exc).__name__ != "ValidationError":
        return None
    try:
        details = errors()
    except Exception:  # noqa: BLE001 - not pydantic's after all
        return None
    for detail in details:
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, LettaOpsError):
            return cause
    return None


def validation_sentence(exc: BaseException) -> str:
    """The first problem of a pydantic ``ValidationError`` as one sentence: the validator's own
    message (``Value error, `` dropped), never the input (blocks hide it)."""
    errors = exc.errors() if callable(getattr(exc, "errors", None)) else []
    if not errors:
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return str(errors[0].get("msg", exc)).removeprefix("Value error, ")
