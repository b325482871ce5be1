"""``letta-ops move-to-postgres``: a SQLite server into an empty PostgreSQL database, at the
same Letta version, then restarted there.

The PostgreSQL database is named by a saved block (``--to-database``) or by
``LETTA_OPS_MOVE_TO_URI``, never on the command line (its URI holds a password).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK
from .options import lock_options, lock_wait, positive
from .output import emit, render_table

if TYPE_CHECKING:  # the model loads with the flow, never for --help
    from ..flows.reports.move import MoveReport


def render_move(report: MoveReport) -> str:
    rows = [
        {
            "table": t.name,
            "action": t.action,
            "rows": t.rows,
            "bytes": t.bytes,
            "sqlite": "" if t.sqlite_count is None else t.sqlite_count,
            "postgresql": "" if t.postgres_count is None else t.postgres_count,
        }
        for t in report.tables
    ]
    table = render_table(rows, ["table", "action", "rows", "bytes", "sqlite", "postgresql"])
    if report.dry_run:
        head = (
            f"plan: {report.rows} rows, {report.bytes} bytes into {report.target}, about "
            f"{report.expected_seconds:.0f} s; nothing changed (drop --dry-run)"
        )
    else:
        head = (
            f"moved {report.rows} rows of {report.server} (Letta {report.version}) into "
            f"{report.target}; the SQLite file is unchanged (sha256 "
            f"{(report.sqlite_sha256_after or '')[:12]}); the server now runs on PostgreSQL: "
            "point LETTA_PG_URI (or the server's database block) at it"
        )
    return f"{table}\n{head}"


def cmd_move(args: argparse.Namespace) -> int:
    from ..flows.move_to_postgres import move_to_postgres

    report = move_to_postgres(
        args.sqlite,
        server=args.server,
        target_database=args.to_database,
        dry_run=args.dry_run,
        batch_rows=args.batch_rows,
        **lock_wait(args),
    )
    emit(report, args.json, render=render_move)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``move-to-postgres``."""
    p = sub.add_parser(
        "move-to-postgres",
        parents=[common, lock_options(None)],
        help="move a SQLite server into an empty PostgreSQL database, same version",
        description="Stop the server, build the same Letta version's schema in the empty "
        "PostgreSQL database (pgvector installed), copy every row in one transaction, compare "
        "every table's and each agent's counts on both sides, set the sequences, and start the "
        "server on PostgreSQL. The SQLite file is only read; any failure empties the target "
        "and starts the server on SQLite again. The target: --to-database BLOCK or "
        "LETTA_OPS_MOVE_TO_URI.",
    )
    p.add_argument(
        "--sqlite",
        metavar="PATH",
        help="the server's SQLite database: HOME/.letta/sqlite.db, its .letta directory, or "
        "sqlite:////... (default: LETTA_OPS_SQLITE_DB)",
    )
    p.add_argument(
        "--to-database", metavar="BLOCK", help="a saved Letta Database block to move into"
    )
    p.add_argument("--dry-run", action="store_true", help="only show the plan")
    p.add_argument(
        "--batch-rows",
        type=positive,
        default=2000,
        metavar="N",
        help="rows read from SQLite at a time (memory is bounded by it; 2000)",
    )
    p.set_defaults(func=cmd_move)
