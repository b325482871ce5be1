"""The ``letta-ops`` command line.

Exit codes (also in the README): 0 done; 1 the operation ran and failed; 2 bad input or
configuration (nothing was changed); 3 the check ran and something needs action.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NEEDS_ACTION = 0, 1, 2, 3

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class CommandError(Exception):
    """Raised by a command with the exit code to use and one sentence for the operator."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- output


def emit(result: Any, as_json: bool, render: Callable[[Any], str] | None = None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif render is not None:
        print(render(result))
    else:
        print(render_mapping(result))


def render_mapping(data: dict) -> str:
    width = max((len(str(k)) for k in data), default=0)
    return "\n".join(f"{str(k).ljust(width)}  {v}" for k, v in data.items())


def render_table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def progress(message: str) -> None:
    """Progress goes to stderr so that ``--json`` output on stdout stays parseable."""
    print(f"letta-ops: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- runtime


def _runtime_profile(args: argparse.Namespace, need_database: bool):
    from blocks.server_profile import load_profile

    profile = load_profile(args.server, need_database=need_database)
    runtime = profile.runtime
    updates: dict[str, Any] = {}
    for field in ("host", "port", "env_file", "source_tree", "state_dir"):
        value = getattr(args, field, None)
        if value is not None:
            updates[field] = value
    if updates:
        runtime = runtime.model_copy(update=updates)
    profile.runtime = runtime
    return profile


def cmd_runtime_install(args: argparse.Namespace) -> int:
    profile = _runtime_profile(args, need_database=False)
    installed = profile.runtime.install(args.version, log=progress)
    emit(
        {
            "version": installed.version,
            "path": str(installed.root),
            "reused_cache": installed.reused,
            "has_migrations": installed.has_migrations,
        },
        args.json,
    )
    return EXIT_OK


def cmd_runtime_migrate(args: argparse.Namespace) -> int:
    from tasks.letta_postgres import alembic_revision

    profile = _runtime_profile(args, need_database=True)
    database = profile.require_database()
    before = alembic_revision(database)
    profile.runtime.migrate(args.version, database, log=progress)
    emit(
        {
            "version": args.version,
            "database": database.redacted_uri(),
            "revision_before": before,
            "revision_after": alembic_revision(database),
        },
        args.json,
    )
    return EXIT_OK


def cmd_runtime_start(args: argparse.Namespace) -> int:
    profile = _runtime_profile(args, need_database=True)
    if args.migrate:
        profile.runtime.migrate(args.version, profile.require_database(), log=progress)
    record = profile.runtime.start(args.version, profile.require_database(), log=progress)
    emit(
        {
            "version": record.version,
            "pid": record.pid,
            "base_url": record.base_url,
            "log": record.log_file,
        },
        args.json,
    )
    return EXIT_OK


def cmd_runtime_stop(args: argparse.Namespace) -> int:
    profile = _runtime_profile(args, need_database=False)
    record = profile.runtime.stop()
    result = {"stopped": record is not None}
    if record is not None:
        result.update({"pid": record.pid, "version": record.version})
    emit(result, args.json)
    return EXIT_OK


def cmd_runtime_status(args: argparse.Namespace) -> int:
    profile = _runtime_profile(args, need_database=False)
    status = profile.runtime.status()
    emit(status, args.json)
    return EXIT_OK if status.get("running") else EXIT_NEEDS_ACTION


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    report = run_demo(log=progress)
    emit(report, args.json, render=lambda r: r["text"])
    return EXIT_OK if report["ok"] else EXIT_FAILED


# --------------------------------------------------------------------------- parser


def _version(value: str) -> str:
    """argparse type: refuse ``latest`` and non-server versions before anything runs."""
    from tasks.letta_versions import UnsupportedLettaVersion, parse_server_version

    try:
        return str(parse_server_version(value))
    except UnsupportedLettaVersion as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence and exit 2, without the usage dump
        self.exit(
            EXIT_BAD_INPUT, f"letta-ops: error: {message}\nRun '{self.prog} --help' for usage.\n"
        )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="NAME",
        help="load the saved blocks called NAME; without it LETTA_BASE_URL, "
        "LETTA_API_KEY and LETTA_PG_URI describe the server",
    )
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = _Parser(
        prog="letta-ops",
        description="Back up, upgrade, roll back and maintain self-hosted Letta servers.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input (nothing changed), 3 needs action.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    runtime = sub.add_parser(
        "runtime",
        help="install, migrate, start and stop pinned Letta versions",
        description="Run an exact Letta server version as a local process. Each version is "
        "installed once, with the dependencies locked in its own release, under "
        "~/.cache/letta-ops and reused.",
    )
    rsub = runtime.add_subparsers(dest="action", required=True, parser_class=_Parser)
    proc = argparse.ArgumentParser(add_help=False)
    proc.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    proc.add_argument("--port", type=int, help="port (default: the port of LETTA_BASE_URL)")
    proc.add_argument("--state-dir", type=Path, help="pid file, log and the server's HOME")
    needs_version = argparse.ArgumentParser(add_help=False)
    needs_version.add_argument(
        "--version",
        required=True,
        type=_version,
        metavar="X.Y.Z",
        help="exact Letta server release, e.g. 0.16.2 (never 'latest')",
    )
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--source-tree",
        metavar="PATH_OR_URL",
        help="Letta source tree for versions whose sdist lacks migrations (0.11.3, 0.12.1)",
    )

    p = rsub.add_parser(
        "install", parents=[common, needs_version], help="install a version (reuses the cache)"
    )
    p.set_defaults(func=cmd_runtime_install)
    p = rsub.add_parser(
        "migrate",
        parents=[common, needs_version, source],
        help="run the version's alembic migrations on LETTA_PG_URI",
    )
    p.set_defaults(func=cmd_runtime_migrate)
    p = rsub.add_parser(
        "start",
        parents=[common, needs_version, proc, source],
        help="start the version and wait until it is healthy",
    )
    p.add_argument(
        "--env-file",
        type=Path,
        help="dotenv file for the server (e.g. the .env with OPENAI_API_KEY)",
    )
    p.add_argument("--migrate", action="store_true", help="run migrations before starting")
    p.set_defaults(func=cmd_runtime_start)
    p = rsub.add_parser("stop", parents=[common, proc], help="stop the server letta-ops started")
    p.set_defaults(func=cmd_runtime_stop)
    p = rsub.add_parser(
        "status", parents=[common, proc], help="pid, version and health (exit 3 when not running)"
    )
    p.set_defaults(func=cmd_runtime_status)
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the main job on embedded PostgreSQL, S3 and a pinned Letta",
        description="Start an embedded PostgreSQL + pgvector, a local S3 "
        "endpoint and a pinned old Letta with sample agents on "
        "127.0.0.1, run the main job, print the report, stop all.",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from blocks.letta_database import InvalidDatabaseURI
    from blocks.server_profile import ProfileError
    from tasks.letta_runtime_process import MigrationsUnavailable
    from tasks.letta_versions import UnsupportedLettaVersion

    return (
        InvalidDatabaseURI,
        ProfileError,
        UnsupportedLettaVersion,
        MigrationsUnavailable,
        ValidationError,
        ValueError,
    )


def first_sentence(exc: BaseException) -> str:
    """One readable line for the operator (pydantic's multi-line errors included)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            return str(errors[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"letta-ops: error: {exc}", file=sys.stderr)
        return exc.code
    except _input_errors() as exc:
        print(f"letta-ops: error: {first_sentence(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("letta-ops: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an operation failed: say what, keep the detail for the log
        print(f"letta-ops: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
