"""``letta-ops metrics``: Prometheus text from the backup catalog and the audit store."""

from __future__ import annotations

import argparse
import sys

from ..tasks.errors import EXIT_OK
from .options import store_options


def cmd_metrics(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ..blocks.server_profile import open_backup_store
    from ..tasks.audit.ops_metrics import collect, render
    from ..tasks.audit.store import AuditStore
    from ..tasks.sets.catalog import list_backup_sets

    sets = list_backup_sets(open_backup_store(args.store, args.server))
    records = AuditStore.from_env().query(limit=args.records)
    text = render(collect(sets, records, datetime.now(UTC)))
    if args.output:
        # Written beside, then renamed: the textfile collector never reads half a file.
        from pathlib import Path

        target = Path(args.output)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(text)
        partial.replace(target)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``metrics``."""
    p = sub.add_parser(
        "metrics",
        parents=[common, store_options()],
        help="print Prometheus metrics: backup age and sizes, drills, upgrades",
        description="Prometheus text (for node-exporter's textfile collector) from the backup "
        "store's sets and the audit store: age of the newest verified set, set sizes, the last "
        "drill's result, the last upgrade's downtime. Reads only; no Prefect server needed.",
    )
    p.add_argument(
        "--output", metavar="FILE", help="write FILE atomically instead of printing (FILE.prom)"
    )
    p.add_argument("--records", type=int, default=5000, help="newest audit records read (5000)")
    p.set_defaults(func=cmd_metrics)
