"""The ``letta-ops`` command line.

Exit codes (also in the README): 0 done; 1 the operation ran and failed; 2 bad input or
configuration (nothing was changed); 3 the check ran and something needs action.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.errors import (  # noqa: E402 - one table of exit codes, re-exported here
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_ACTION,
    EXIT_OK,
)

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
    profile = _runtime_profile(args, need_database=False)
    status = profile.runtime.status()
    emit(status, args.json)
    return EXIT_OK if status.get("running") else EXIT_NEEDS_ACTION


# --------------------------------------------------------------------------- backups


class RichProgress:
    """Progress bars on stderr for exports and uploads (stdout stays clean for --json)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bytes = DownloadColumn()
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, label: str, total: int | None, unit: str) -> None:
        self._tasks[label] = self._progress.add_task(f"{label} ({unit})", total=total)

    def advance(self, label: str, amount: int = 1) -> None:
        if label in self._tasks:
            self._progress.advance(self._tasks[label], amount)

    def finish(self, label: str) -> None:
        if label in self._tasks:
            task_id = self._tasks[label]
            task = self._progress.tasks[task_id]
            self._progress.update(task_id, total=task.completed)


def _with_progress(run: Callable[[], Any]) -> Any:
    from tasks import progress_events

    with RichProgress() as bars:
        progress_events.install(bars)
        try:
            return run()
        finally:
            progress_events.install(None)


def cmd_backup(args: argparse.Namespace) -> int:
    from flows.backup import backup

    report = _with_progress(
        lambda: backup(
            server=args.server,
            store=args.store,
            allow_partial_agents=args.allow_partial_agents,
            compression=args.compress,
            concurrency=args.concurrency,
            purpose="manual",
            pinned=args.pin,
        )
    )
    emit(report, args.json, render=_render_backup)
    return EXIT_OK


def _render_backup(report: dict) -> str:
    lines = [
        f"backup set   {report['set']}  ({'verified' if report['verified'] else 'NOT verified'})",
        f"letta        {report['letta_version']}  alembic {report['alembic_revision']}",
        f"agents       {report['agents_exported']} of {report['agents_total']} exported",
        f"database     {report['tables']} tables, {report['rows']} rows, "
        f"dump {report['dump_bytes']} bytes",
    ]
    lines += [
        f"  failed     {a['id']} {a['name']!r}: {a['error']}" for a in report["agents_failed"]
    ]
    return "\n".join(lines)


def cmd_backups_list(args: argparse.Namespace) -> int:
    from blocks.server_profile import load_profile, open_backup_store
    from tasks.backup_catalog import list_backup_sets

    store = open_backup_store(args.store, args.server)
    server = None if args.all_servers else load_profile(args.server).name
    rows = [
        {
            "set": f"{s.server}/{s.set_id}",
            "created_at": s.created_at,
            "complete": s.complete,
            "verified": s.verified,
            "pinned": s.pinned,
            "purpose": s.purpose,
            "bytes": s.size,
        }
        for s in list_backup_sets(store, server)
    ]
    emit(
        rows,
        args.json,
        render=lambda r: render_table(
            r, ["set", "created_at", "complete", "verified", "pinned", "purpose", "bytes"]
        ),
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from flows.verify import verify

    result = verify(
        args.set,
        server=args.server,
        store=args.store,
        drill=args.drill,
        drill_database=args.drill_database,
    )
    emit(
        result,
        args.json,
        render=lambda r: (
            f"{r['set']}: verified {r['objects']} objects"
            + (
                f", restore drill matched {r['drill_result']['tables']} tables"
                if r.get("drill_result")
                else ""
            )
        ),
    )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from flows.prune import prune

    result = prune(
        server=None if args.all_servers else _server_name(args),
        store=args.store,
        keep_last=args.keep_last,
        keep_daily=args.keep_daily,
        keep_weekly=args.keep_weekly,
        keep_monthly=args.keep_monthly,
        execute=args.execute,
    )

    def render(r: dict) -> str:
        head = "deleted" if r["executed"] else "plan (nothing deleted; add --execute)"
        return (
            render_table(
                r["sets"],
                ["set_id", "server", "created_at", "action", "reasons", "verified", "pinned"],
            )
            + f"\n{head}: keep {r['keep']}, delete {r['delete']}"
        )

    emit(result, args.json, render=render)
    return EXIT_OK


def _server_name(args: argparse.Namespace) -> str:
    from blocks.server_profile import load_profile

    return load_profile(args.server).name


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import load_deployments, serve_all

    if args.list:
        rows = [
            {
                "name": d["name"],
                "flow": d["entrypoint"],
                "schedule": ", ".join(s.get("cron", "") for s in d.get("schedules") or []),
                "timezone": ", ".join(s.get("timezone", "") for s in d.get("schedules") or []),
            }
            for d in load_deployments(args.file)
        ]
        emit(
            rows,
            args.json,
            render=lambda r: render_table(r, ["name", "flow", "schedule", "timezone"]),
        )
        return EXIT_OK
    serve_all(args.file)
    return EXIT_OK


# --------------------------------------------------------------------------- upgrade


def _render_plan(report: dict) -> str:
    plan = report["plan"]
    lines = [
        f"upgrade {plan['server']} ({plan['base_url']}): Letta {plan['from_version']} -> "
        f"{plan['to_version']}, strategy {plan['strategy']}"
        + (" (LOSSY: agent files only)" if plan["lossy"] else " (lossless)"),
        f"agents {plan['agents']}, database {plan['database_bytes']} bytes, "
        f"expected downtime about {plan['expected_downtime_seconds']} s",
        f"database: PostgreSQL {plan['postgres_major']}, role {plan['database_role']}, "
        f"emptied by {plan['reset_mode']} when restoring",
        f"runtime: {plan['runtime']}",
        "steps:",
    ]
    lines += [f"  {i}. {step}" for i, step in enumerate(plan["steps"], 1)]
    if plan["renames"]:
        lines.append(f"renames ({plan['name_rule']}):")
        lines += [
            f"  {agent_id}: {c['old']!r} -> {c['new']!r}" for agent_id, c in plan["renames"].items()
        ]
    return "\n".join(lines)


def _render_upgrade(report: dict) -> str:
    text = _render_plan(report) + f"\noutcome: {report['outcome']}"
    if report.get("downtime_seconds") is not None:
        text += f", downtime {report['downtime_seconds']} s, backup {report['backup_set']}"
    rows = report.get("verification") or []
    if rows:
        text += "\n" + render_table(
            rows,
            [
                "name_before",
                "name_after",
                "messages_before",
                "messages_after",
                "blocks_before",
                "blocks_after",
            ],
        )
    return text


def cmd_upgrade(args: argparse.Namespace) -> int:
    from flows.upgrade import upgrade

    common = {
        "to_version": args.to,
        "server": args.server,
        "store": args.store,
        "strategy": args.strategy,
        "reset": args.reset,
    }
    if args.dry_run:
        emit(upgrade(**common, dry_run=True), args.json, render=_render_plan)
        return EXIT_OK
    if not args.yes:
        plan = upgrade(**common, dry_run=True)
        print(_render_plan(plan), file=sys.stderr)
        if not sys.stdin.isatty():
            raise CommandError(
                "Refusing to upgrade without confirmation; review the plan "
                "above and rerun with --yes.",
                EXIT_BAD_INPUT,
            )
        if input("Proceed with the upgrade? [y/N] ").strip().lower() not in {"y", "yes"}:
            raise CommandError("Upgrade cancelled; nothing was changed.", EXIT_BAD_INPUT)
    report = _with_progress(
        lambda: upgrade(**common, approval=args.approval, lock_timeout_seconds=args.wait)
    )
    emit(report, args.json, render=_render_upgrade)
    return EXIT_OK


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from flows.demo_environment import stop_prefect_ui

    if args.stop_ui:
        emit({"stopped": stop_prefect_ui()}, args.json)
        return EXIT_OK
    report = run_demo(log=progress, ui=not args.no_ui)
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
    common.add_argument(
        "--operator",
        metavar="NAME",
        help="who runs this, for the audit history (default: LETTA_OPS_OPERATOR, else your "
        "login name)",
    )

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
    _add_backup_commands(sub, common)
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the main job on embedded PostgreSQL, S3 and a pinned Letta",
        description="Start an embedded PostgreSQL + pgvector, a local S3 "
        "endpoint and a pinned old Letta with sample agents on "
        "127.0.0.1, run the main job, print the report, stop all.",
    )
    p.add_argument(
        "--no-ui",
        action="store_true",
        help="run on a temporary Prefect server instead of leaving a UI running",
    )
    p.add_argument("--stop-ui", action="store_true", help="stop the demo's Prefect UI server")
    p.set_defaults(func=cmd_demo)
    # Each area's commands live in a module of their own, next to this one.
    from flows import cli_history, cli_maintenance, cli_restore

    for area in (cli_restore, cli_history, cli_maintenance):
        area.add_commands(sub, common)
    return parser


def store_options() -> argparse.ArgumentParser:
    """The ``--store`` option every command that reads or writes backup sets shares."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        metavar="URL",
        help="backup repository: s3://BUCKET/PREFIX or file:///PATH (default: "
        "LETTA_OPS_STORE, else the server's saved store block)",
    )
    return store


def lock_options(default: float | None) -> argparse.ArgumentParser:
    """The ``--wait`` option of every command that takes the server's destructive lock."""
    lock = argparse.ArgumentParser(add_help=False)
    shown = "the flow's default" if default is None else f"{default:g}; 0 refuses at once"
    lock.add_argument(
        "--wait",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"wait this long for another destructive run on the server to finish ({shown})",
    )
    return lock


def reset_options() -> argparse.ArgumentParser:
    """The ``--reset`` option of every command that empties a database and restores into it."""
    reset = argparse.ArgumentParser(add_help=False)
    reset.add_argument(
        "--reset",
        choices=["auto", "recreate", "in-place"],
        default=None,
        help="how to empty the database before a restore: 'recreate' drops and creates it "
        "with pgvector (needs CREATEDB and a superuser); 'in-place' keeps the database and "
        "pgvector and drops the schema's objects (needs only their ownership, as on managed "
        "PostgreSQL); default: the database block's setting or LETTA_OPS_RESET_MODE, else "
        "whichever the role may do. The plan says which one runs.",
    )
    return reset


def _add_backup_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    store = store_options()

    p = sub.add_parser(
        "backup",
        parents=[common, store],
        help="back up a server into a new verified backup set",
        description="Export every agent (files named by agent id), pg_dump the "
        "database with row counts in the same snapshot, write the "
        "manifest last, verify the set from storage. Exit 1 if an "
        "agent could not be exported, unless --allow-partial-agents.",
    )
    p.add_argument(
        "--allow-partial-agents",
        action="store_true",
        help="succeed even if some agents cannot be exported (the dump holds them)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="agent exports in flight (4)")
    p.add_argument(
        "--compress",
        metavar="SPEC",
        default=None,
        help="pg_dump compression: none, a gzip level 0-9, gzip:N, zstd[:N] or lz4[:N] (zstd "
        "and lz4 need a client built with them); default LETTA_OPS_COMPRESS, else gzip:6. "
        "Recorded in the manifest.",
    )
    p.add_argument("--pin", action="store_true", help="never let retention delete this set")
    p.set_defaults(func=cmd_backup)

    backups = sub.add_parser("backups", help="list backup sets")
    bsub = backups.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = bsub.add_parser(
        "list",
        parents=[common, store],
        help="sets of this server, newest first (complete = has a manifest)",
    )
    p.add_argument("--all-servers", action="store_true", help="every server in the store")
    p.set_defaults(func=cmd_backups_list)

    p = sub.add_parser(
        "verify",
        parents=[common, store],
        help="check a set's checksums and dump; --drill restores it",
        description="Re-read every object of a set and check size and sha256, "
        "read the dump's table of contents; with --drill restore "
        "it into a scratch database and compare per-table counts.",
    )
    p.add_argument("set", metavar="SET", help="SERVER/SET_ID or SET_ID (see 'backups list')")
    p.add_argument("--drill", action="store_true", help="restore into a scratch database")
    p.add_argument(
        "--drill-database",
        metavar="BLOCK",
        help="saved Letta Database block of the PostgreSQL to drill on (default: "
        "LETTA_OPS_DRILL_PG_URI, else the server's own PostgreSQL)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "prune",
        parents=[common, store],
        help="apply grandfather-father-son retention (plan only by default)",
        description="Show which sets retention keeps and deletes. The newest "
        "verified set and pinned sets are never deleted; incomplete "
        "sets older than a day are. Deletes only with --execute.",
    )
    p.add_argument("--keep-last", type=int, default=7)
    p.add_argument("--keep-daily", type=int, default=7)
    p.add_argument("--keep-weekly", type=int, default=4)
    p.add_argument("--keep-monthly", type=int, default=6)
    p.add_argument("--all-servers", action="store_true", help="prune every server's sets")
    p.add_argument("--execute", action="store_true", help="really delete")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "upgrade",
        parents=[common, store, lock_options(0), reset_options()],
        help="upgrade to a pinned Letta version after a verified backup; rolls back on failure",
        description="Pre-flight (health, versions, disk, agent names under the target's rule), "
        "a verified pinned backup, then strategy 'migrate' (stop, alembic upgrade the same "
        "database, fix sequences, start the target: lossless) or 'rebuild' (export agents, "
        "empty the database (see --reset), migrate, start, import agents with sanitized names). "
        "Any failure after the first destructive step restores the backup and starts the old "
        "version. Asks for confirmation unless --yes; --dry-run prints the plan only.",
    )
    p.add_argument("--to", required=True, type=_version, metavar="X.Y.Z", help="target release")
    p.add_argument("--strategy", choices=["migrate", "rebuild"], default="migrate")
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--approval",
        action="store_true",
        help="pause the Prefect run before the first destructive step until approved in the UI",
    )
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser(
        "serve", parents=[common], help="serve every deployment of prefect.yaml from this process"
    )
    p.add_argument("--file", type=Path, default=None, help="prefect.yaml to read")
    p.add_argument("--list", action="store_true", help="only list the deployments")
    p.set_defaults(func=cmd_serve)


def first_sentence(exc: BaseException) -> str:
    """One readable line for the operator (pydantic's multi-line errors included)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            return str(errors[0].get("msg", exc)).removeprefix("Value error, ")
    from tasks.letta_postgres import database_error_message

    return database_error_message(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "operator", None):
        os.environ["LETTA_OPS_OPERATOR"] = args.operator
    from pydantic import ValidationError

    from tasks.errors import LettaOpsError

    try:
        return args.func(args)
    except CommandError as exc:
        return _fail(args, str(exc), exc.code)
    except LettaOpsError as exc:  # its class says which exit code (tasks/errors.py)
        return _fail(args, first_sentence(exc), exc.exit_code)
    except ValidationError as exc:  # a block or setting built from bad values
        return _fail(args, first_sentence(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # an operation failed: say what, keep the detail for the log
        return _fail(args, first_sentence(exc), EXIT_FAILED)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One sentence on stderr; with ``--json`` also ``{"error", "exit_code"}`` on stdout, so
    a script reading stdout learns of the failure too."""
    print(f"letta-ops: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}))
    return code


if __name__ == "__main__":
    sys.exit(main())
