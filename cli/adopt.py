"""``letta-ops backups adopt FILE``: a custom-format ``pg_dump`` made by hand becomes a
verified backup set of the server, for ``rollback --to`` and ``restore``.

A file that is not such an archive, a dump of another application or schema, or of a Letta
schema at a revision no known release has, is refused in one sentence (exit 2) and nothing is
stored; ``--dry-run`` inspects the dump (one restore into a scratch database) and stores nothing.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK
from .output import emit, progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.adopt_dump import AdoptReport


def render_adopt(report: AdoptReport) -> str:
    head = (
        "plan (nothing stored; drop --dry-run)"
        if report.dry_run
        else f"adopted as {report.set} (verified: {report.verified}); roll back to it with "
        f"'letta-ops rollback --to {report.set}'"
    )
    return (
        f"{report.file}: Letta {report.letta_version} (alembic {report.alembic_revision}), "
        f"schema {report.schema_}, dumped from PostgreSQL {report.postgres_version}\n"
        f"{report.tables} tables, {report.rows} rows, {report.agents} agents, "
        f"{report.dump_bytes} bytes\n{head}"
    )


def cmd_backups_adopt(args: argparse.Namespace) -> int:
    from ..flows.adopt_dump import adopt_dump

    progress(f"inspecting {args.file} (one restore into a scratch database)")
    report = adopt_dump(
        args.file, server=args.server, store=args.store, pinned=args.pin, dry_run=args.dry_run
    )
    emit(report, args.json, render=render_adopt)
    return EXIT_OK


def add_adopt_command(
    bsub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    store: argparse.ArgumentParser,
) -> None:
    """Register ``backups adopt`` under ``backups``."""
    p = bsub.add_parser(
        "adopt",
        parents=[common, store],
        help="make a pg_dump taken by hand (custom format) a verified set of this server",
        description="Check the archive's table of contents (Letta's tables in this server's "
        "schema), restore it once into a scratch database to read its alembic revision, Letta "
        "version and per-table counts, then store it as a set (purpose 'adopted', no agent "
        "files) with an authenticated manifest and verify it, so 'rollback --to' and "
        "'restore' can use it.",
    )
    p.add_argument("file", metavar="FILE", help="a pg_dump --format=custom archive")
    p.add_argument("--pin", action="store_true", help="never let retention delete this set")
    p.add_argument("--dry-run", action="store_true", help="inspect the dump; store nothing")
    p.set_defaults(func=cmd_backups_adopt)
