"""``letta-ops``: the parser, built from each area's commands, and ``main``.

Exit codes (also in the README and :mod:`letta_ops.cli.errors`): 0 done; 1 the operation ran and
failed; 2 refused, nothing was changed; 3 the check ran and something needs action; 11 busy; 130
interrupted. ``main`` maps every exception to one of them in one place.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import warnings
from typing import NoReturn

from ..tasks.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_ACTION,
    EXIT_OK,
)
from .errors import error_sentence, exit_code_for, report_failure
from .options import Parser, common_options
from .version import VersionAction

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NEEDS_ACTION",
    "EXIT_OK",
    "build_parser",
    "leave",
    "main",
    "run",
]

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL each command runs on a temporary Prefect server; its 20 s default
# start-up limit is too short on a busy two-core host.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# The command line prints progress and one sentence per error; the runs' full logs (with
# tracebacks) go to the Prefect API. PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO shows them here.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
# platformdirs warns on hosts without a login session; nothing here uses the runtime dir.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def build_parser() -> argparse.ArgumentParser:
    from . import (
        agent_portability,
        alerts,
        backups,
        demo,
        fleet,
        history,
        maintenance,
        metrics,
        move,
        restore,
        runtime,
        serve,
        upgrade,
    )

    parser = Parser(
        prog="letta-ops",
        description="Back up, upgrade, roll back and maintain self-hosted Letta servers.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input (nothing changed), 3 needs action, "
        "11 busy (another run holds the server), 130 interrupted.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = common_options()
    # Each area registers its commands (in this order in --help).
    for area in (
        runtime,
        backups,
        upgrade,
        fleet,
        serve,
        demo,
        restore,
        agent_portability,
        move,
        history,
        maintenance,
        metrics,
        alerts,
    ):
        area.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "operator", None):
        os.environ["LETTA_OPS_OPERATOR"] = args.operator
    if getattr(args, "encryption_key_file", None):
        # The path, never a key, travels to the flows (their store reads the file).
        os.environ["LETTA_OPS_ENCRYPTION_KEY_FILE"] = args.encryption_key_file
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:  # its class says which exit code
        # --json-list (deprecated) keeps --json's failure document too.
        as_json = getattr(args, "json", False) or getattr(args, "json_list", False)
        sentence = error_sentence(exc)
        if isinstance(exc, TimeoutError):
            from ..tasks.runs.timeouts import is_run_timeout, timeout_sentence

            if is_run_timeout(exc):
                sentence = timeout_sentence(getattr(args, "command", None), exc)
        return report_failure(as_json, sentence, exit_code_for(exc))


def leave(code: int) -> NoReturn:
    """End the process with ``code`` once everything that must outlive the command has run,
    skipping only the interpreter's teardown of its modules.

    Why: a command has imported Prefect and some 1 250 modules; tearing them down one by one
    after the work is done cost 1-3 s of every command on a busy two-core host (issue #32),
    for nothing. What still runs, in the interpreter's own order: the wait for non-daemon
    threads and Prefect's service drains (its run logs and events reach the API), then every
    ``atexit`` handler (``logging.shutdown``, the temporary Prefect server's stop), then the
    standard streams are flushed. An interpreter without that hook exits the ordinary way.
    """
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:
        sys.exit(code)
    try:
        shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing left to say
                pass
        os._exit(code)


def run() -> NoReturn:
    """The ``letta-ops`` command (``python -m letta_ops.cli`` too): :func:`main`, then
    :func:`leave`. Tests call :func:`main`, which returns."""
    leave(main())


if __name__ == "__main__":
    run()
