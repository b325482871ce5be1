"""``letta-ops servers list``, ``fleet-backup`` and ``fleet-upgrade``: many servers at once.

The inventory is the saved Letta Server blocks and their tags; a selector (``--servers``)
picks them by name, glob or ``key:value`` tag.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK
from .options import object_lock_options, positive, store_options, version
from .output import emit, render_table, with_progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.fleet_backup import FleetBackupReport
    from ..flows.fleet_upgrade import FleetUpgradeReport

SERVERS_COLUMNS = ["server", "tags", "health", "version", "newest_verified_set"]


def cmd_servers_list(args: argparse.Namespace) -> int:
    from ..blocks.fleet_inventory import saved_servers, server_overview
    from ..tasks.runs.server_selection import select_servers

    inventory = saved_servers()
    chosen = select_servers(inventory, args.servers) if inventory else []
    rows = [server_overview(entry, args.store) for entry in chosen]
    emit(
        {"servers": rows},
        args.json,
        render=lambda r: (
            render_table(
                [{**row, "tags": " ".join(row["tags"])} for row in r["servers"]], SERVERS_COLUMNS
            )
            if r["servers"]
            else "no saved Letta Server blocks (save one per server, see README 'Fleets')"
        ),
        versioned=True,
    )
    return EXIT_OK


def render_fleet_backup(report: FleetBackupReport) -> str:
    rows = [
        {
            "server": r.server or "(environment)",
            "set": r.backup_set or "",
            "agents": r.agents,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "outcome": "ok" if r.ok else f"FAILED: {r.error}",
            "worker": r.worker or "",
        }
        for r in report.servers
    ]
    columns = ["server", "set", "agents", "bytes", "seconds", "outcome", "worker"]
    return render_table(rows, columns) + (
        f"\n{report.succeeded} of {len(rows)} server backups succeeded"
    )


def cmd_fleet_backup(args: argparse.Namespace) -> int:
    from ..flows.fleet_backup import fleet_backup

    report = with_progress(
        lambda: fleet_backup(
            servers=args.servers,
            store=args.store,
            deployment=None if args.local else args.deployment,
            per_store_limit=args.per_store,
            per_host_limit=args.per_host,
            allow_partial_agents=args.allow_partial_agents,
            lock_days=args.lock_days,
            lock_mode=args.lock_mode,
        )
    )
    emit(report, args.json, render=render_fleet_backup)
    return EXIT_OK


def render_fleet_upgrade(report: FleetUpgradeReport) -> str:
    lines = [f"fleet upgrade to {report.to_version}: {report.outcome}"]
    lines += [
        f"  wave {i}: {', '.join(wave)}" + (" (canary)" if i == 1 else "")
        for i, wave in enumerate(report.waves, 1)
    ]
    if report.stopped_because:
        lines.append(f"stopped: {report.stopped_because}")
    lines += [
        f"  {name}: {version or 'down'}"
        + (f" ({report.outcomes[name]})" if report.outcomes.get(name) else "")
        for name, version in report.versions.items()
    ]
    return "\n".join(lines)


def cmd_fleet_upgrade(args: argparse.Namespace) -> int:
    from ..flows.fleet_upgrade import fleet_upgrade

    report = with_progress(
        lambda: fleet_upgrade(
            to_version=args.to,
            servers=args.servers,
            canary=args.canary,
            wave_size=args.wave_size,
            strategy=args.strategy,
            soak_seconds=args.soak,
            smoke_check=not args.no_smoke_check,
            approval_between_waves=args.approval,
            deployment=None if args.local else args.deployment,
            store=args.store,
            dry_run=args.dry_run,
        )
    )
    emit(report, args.json, render=render_fleet_upgrade)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``servers list``, ``fleet-backup`` and ``fleet-upgrade``."""
    store = store_options()
    selector = argparse.ArgumentParser(add_help=False)
    selector.add_argument(
        "--servers",
        metavar="SELECTOR",
        default="*",
        help="saved servers by name, glob or key:value tag, comma-separated, e.g. 'env:prod' "
        "or 'prod-*,billing' (default '*': every saved server)",
    )

    servers = sub.add_parser("servers", help="the fleet: saved servers and how they stand")
    ssub = servers.add_subparsers(dest="servers_command", required=True, metavar="COMMAND")
    p = ssub.add_parser(
        "list",
        parents=[common, store, selector],
        help="saved servers with tags, health, version and newest verified backup",
    )
    p.set_defaults(func=cmd_servers_list)

    local = argparse.ArgumentParser(add_help=False)
    local.add_argument(
        "--local",
        action="store_true",
        help="run each server's child here, one after another, instead of as deployment runs "
        "on the work pool's workers",
    )

    p = sub.add_parser(
        "fleet-backup",
        parents=[common, store, selector, local, object_lock_options()],
        help="back up every selected server (one child run each, on the workers)",
        description="One run of the backup deployment per selected server, on the work pool's "
        "workers; at most --per-store children per backup store and --per-host per database "
        "host at once. One failure never stops the others; exit 1 if any failed.",
    )
    p.add_argument("--deployment", default="letta-backup/backup", metavar="FLOW/DEPLOYMENT")
    p.add_argument("--per-store", type=positive, default=2, metavar="N", help="(2)")
    p.add_argument("--per-host", type=positive, default=1, metavar="N", help="(1)")
    p.add_argument("--allow-partial-agents", action="store_true")
    p.set_defaults(func=cmd_fleet_backup)

    p = sub.add_parser(
        "fleet-upgrade",
        parents=[common, store, selector, local],
        help="rolling upgrade: a canary, a soak, then waves; stops at the first failure",
        description="Upgrade the canary alone (its own verified backup, verification and "
        "rollback), soak it (health at the target, a scratch agent created, exported and "
        "deleted), then waves of --wave-size. At the first failure no new wave starts. "
        "--dry-run prints the waves.",
    )
    p.add_argument("--to", required=True, type=version, metavar="VERSION")
    p.add_argument("--canary", metavar="NAME", help="the first server (default: first by name)")
    p.add_argument("--wave-size", type=positive, default=2, metavar="N", help="(2)")
    p.add_argument("--strategy", choices=["migrate", "rebuild"], default="migrate")
    p.add_argument("--soak", type=float, default=120, metavar="SECONDS", help="(120)")
    p.add_argument("--no-smoke-check", action="store_true", help="skip the scratch-agent check")
    p.add_argument("--approval", action="store_true", help="approve each wave in the Prefect UI")
    p.add_argument("--dry-run", action="store_true", help="print the waves; change nothing")
    p.add_argument("--deployment", default="letta-upgrade/upgrade", metavar="FLOW/DEPLOYMENT")
    p.set_defaults(func=cmd_fleet_upgrade)
