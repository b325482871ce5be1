"""The one error hierarchy of letta-ops, and the exit code of each kind.

Why: a script driving ``letta-ops`` must tell "you asked for something impossible, nothing
changed" from "it ran and failed" from "another run holds the server" from "it checked and
something needs you". Each exception says which it is by its class; the command line maps the
class to the exit code in one place (``flows.cli.main``), as restic does.

| class | exit code | meaning |
|---|---|---|
| :class:`Refused` | 2 | bad input, configuration or privilege; nothing was changed |
| :class:`Failed` | 1 | the operation ran and failed (the message says what state it left) |
| :class:`Busy` | 11 | another destructive run holds the server |
| :class:`NeedsAction` | 3 | the check ran and something needs the operator |

Anything else that escapes is exit 1.
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
