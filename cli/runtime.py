"""``letta-ops runtime``: install, migrate, start, stop and status of pinned Letta versions.

``runtime status`` answers from the pid file without loading Prefect when the environment
configures letta-ops' process runtime (no ``--server``, ``LETTA_OPS_RUNTIME`` unset or
``process``); saved blocks and the other runtime kinds load the profile.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..tasks.errors import EXIT_NEEDS_ACTION, EXIT_OK
from .options import Parser, port, version
from .output import emit, progress


def _runtime_profile(args: argparse.Namespace, need_database: bool):
    from ..blocks.server_profile import load_profile

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
    from ..tasks.postgres.letta_schema import alembic_revision

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
    # On SQLite Letta builds its own schema (create_all): there is nothing to migrate.
    if args.migrate or profile.sqlite is None:
        database = profile.require_database()
        if args.migrate:
            profile.runtime.migrate(args.version, database, log=progress)
    else:
        database = profile.sqlite
    record = profile.runtime.start(args.version, database, log=progress)
    emit(
        {
            "version": record.version,
            "pid": record.pid,
            "base_url": record.base_url,
            "log": getattr(record, "log_file", None),
        },
        args.json,
    )
    return EXIT_OK


def cmd_runtime_stop(args: argparse.Namespace) -> int:
    profile = _runtime_profile(args, need_database=False)
    record = profile.runtime.stop(log=progress)
    result = {"stopped": bool(record)}
    if hasattr(record, "pid"):
        result.update({"pid": record.pid, "version": record.version})
    emit(result, args.json)
    return EXIT_OK


def cmd_runtime_status(args: argparse.Namespace) -> int:
    from ..blocks.server_profile import process_state_dir

    state_dir = process_state_dir(args.server, args.state_dir)
    if state_dir is not None:  # the environment's process runtime: its pid file, no Prefect
        from ..tasks.runtimes.process import process_status

        status = process_status(state_dir)
    else:
        status = _runtime_profile(args, need_database=False).runtime.status()
    emit(status, args.json, versioned=True)
    return EXIT_OK if status.get("running") else EXIT_NEEDS_ACTION


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``runtime install|migrate|start|stop|status``."""
    runtime = sub.add_parser(
        "runtime",
        help="install, migrate, start and stop pinned Letta versions",
        description="Run an exact Letta server version as a local process. Each version is "
        "installed once, with the dependencies locked in its own release, under "
        "~/.cache/letta-ops and reused.",
    )
    rsub = runtime.add_subparsers(dest="action", required=True, parser_class=Parser)
    proc = argparse.ArgumentParser(add_help=False)
    proc.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    proc.add_argument("--port", type=port, help="port (default: the port of LETTA_BASE_URL)")
    proc.add_argument("--state-dir", type=Path, help="pid file, log and the server's HOME")
    needs_version = argparse.ArgumentParser(add_help=False)
    needs_version.add_argument(
        "--version",
        required=True,
        type=version,
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
