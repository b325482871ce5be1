"""``letta-ops backup``, ``backups list``, ``verify`` and ``prune``.

``backups list`` with a repository URL (``--store`` or ``LETTA_OPS_STORE``) and no ``--server``
reads the store without loading Prefect.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_OK
from ..tasks.postgres import early_dump
from ..tasks.runs import temporary_server
from .adopt import add_adopt_command
from .options import (
    Parser,
    allow_legacy_option,
    common_options,
    future_date,
    json_list_options,
    non_negative,
    object_lock_options,
    store_options,
)
from .output import emit, emit_rows, phases_lines, render_table, with_progress

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.backup import BackupReport
    from ..flows.prune import PruneReport
    from ..flows.verify import VerifyReport


def cmd_backup(args: argparse.Namespace) -> int:
    # The dump, the backup's long pole, starts first: while Prefect and the flow import and
    # the run starts (the run takes it over only if it is that run's own: early_dump).
    if args.server is None:
        early_dump.start_early_dump(args.compress, args.dump_priority)
    try:
        api = temporary_server.start_if_needed()  # starts while the flow's modules import
        from ..flows.backup import backup

        temporary_server.wait_ready(api)

        report = with_progress(
            lambda: backup(
                server=args.server,
                store=args.store,
                allow_partial_agents=args.allow_partial_agents,
                compression=args.compress,
                concurrency=args.concurrency,
                purpose="manual",
                pinned=args.pin,
                lock_days=args.lock_days,
                lock_mode=args.lock_mode,
                dump_priority=args.dump_priority,
                full_exports=args.full_exports or None,
            )
        )
    finally:
        early_dump.drop_early_dump()
    emit(report, args.json, render=render_backup)
    from ..blocks.server_profile import open_backup_store

    warn_if_keyless(open_backup_store(args.store, args.server))
    return EXIT_OK


def render_backup(report: BackupReport) -> str:
    lines = [
        f"backup set   {report.set}  ({'verified' if report.verified else 'NOT verified'})",
        f"letta        {report.letta_version}  alembic {report.alembic_revision}",
        f"agents       {report.agents_exported} of {report.agents_total} exported"
        + (f" ({report.agents_reused} unchanged, reused)" if report.agents_reused else ""),
        f"database     {report.tables} tables, {report.rows} rows, dump {report.dump_bytes} bytes",
    ]
    if report.object_lock:
        lock = report.object_lock
        lines.append(f"locked       {lock.mode.lower()} until {lock.retain_until.isoformat()}")
    if report.encryption_key_id:
        lines.append(f"encrypted    AES-256-GCM, key id {report.encryption_key_id}")
    lines += [f"  failed     {a.id} {a.name!r}: {a.error}" for a in report.agents_failed]
    lines += phases_lines(report.phases)
    return "\n".join(lines)


BACKUP_LIST_COLUMNS = ["set", "created_at", "status", "pinned", "purpose", "bytes"]


def cmd_backups_list(args: argparse.Namespace) -> int:
    from ..blocks.server_profile import open_backup_store, server_name
    from ..tasks.sets.catalog import list_backup_sets

    store = open_backup_store(args.store, args.server)
    server = None if args.all_servers else server_name(args.server)
    rows = [
        {
            "set": f"{s.server}/{s.set_id}",
            "created_at": s.created_at,
            "complete": s.complete,
            "verified": s.verified,
            "pinned": s.pinned,
            "purpose": s.purpose,
            "bytes": s.size,
            "status": s.status,
            "trust": s.trust,
            "trust_reason": s.trust_reason,
            "verification": s.verification,
            "pinned_until": s.pinned_until,
        }
        for s in list_backup_sets(store, server)
    ]
    emit_rows(rows, "sets", args, render=render_backup_list)
    if not args.json and not getattr(args, "json_list", False):
        warn_if_keyless(store)
    return EXIT_OK


def render_backup_list(rows: list[dict]) -> str:
    """The table, each pin's end in its row, then why each UNTRUSTED / LEGACY set is so."""
    shown = [
        {**r, "pinned": f"until {r['pinned_until']:%Y-%m-%d}" if r["pinned_until"] else r["pinned"]}
        for r in rows
    ]
    lines = [render_table(shown, BACKUP_LIST_COLUMNS)]
    lines += [f"{r['set']}: {r['status']}: {r['trust_reason']}" for r in rows if r["trust_reason"]]
    return "\n".join(lines)


def warn_if_keyless(store: object) -> None:
    """One line on stderr when an S3 repository has no key: its sets cannot be authenticated."""
    import sys

    from ..tasks.sets.catalog import keyless_warning

    warning = keyless_warning(store)
    if warning:
        print(f"letta-ops: warning: {warning}", file=sys.stderr)


def render_verify(result: VerifyReport) -> str:
    drill = result.drill_result
    encryption = result.encryption
    summary = (
        f"{result.set}: verified {result.objects} objects"
        + (f", restore drill matched {drill.tables} tables" if drill else "")
        + (
            f" (encrypted, key id {encryption.key_id}: "
            + (
                "decrypted and authenticated)"
                if encryption.decrypted
                else "stored bytes only; no key, so the dump's table of contents was not read)"
            )
            if encryption
            else ""
        )
    )
    return "\n".join([summary, *phases_lines(result.phases)])


def cmd_backups_new_key(args: argparse.Namespace) -> int:
    """Print a new client-side encryption key and its id. The key goes to stdout only, for
    the operator to put where it belongs (a key file, a secret store, the block's field)."""
    import sys

    from ..tasks.store.encryption_keys import new_key, parse_key

    key = new_key()
    key_id = parse_key(key, "the new key").key_id
    if args.json:
        emit({"key": key, "key_id": key_id}, True, render=str)
    else:
        print(key)
        print(
            f"key id {key_id}: keep this key outside the backup store (no set restores or "
            "authenticates without it); set LETTA_OPS_ENCRYPTION_KEY, put it first in "
            "--encryption-key-file, or save it in the store block's encryption_key (or, to "
            "authenticate sets without encrypting them, LETTA_OPS_SIGNING_KEY).",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_backups_pin(args: argparse.Namespace) -> int:
    """Pin (``--until DATE``, or for good) or unpin a set, as a new authenticated record."""
    from ..blocks.server_profile import open_backup_store, server_name
    from ..tasks.sets.catalog import load_manifest, record_pin
    from ..tasks.sets.manifest import parse_set_reference

    pinned = args.action == "pin"
    store = open_backup_store(args.store, args.server)
    server, set_id = parse_set_reference(args.set, server_name(args.server))
    load_manifest(store, server, set_id, allow_legacy=args.allow_legacy)  # a set we believe
    until = getattr(args, "until", None)
    record_pin(store, server, set_id, pinned, until)
    result = {
        "set": f"{server}/{set_id}",
        "pinned": pinned,
        "until": until.isoformat() if until else None,
    }
    emit(
        result,
        args.json,
        render=lambda r: (
            f"{r['set']}: "
            + (f"pinned until {r['until']}" if r["until"] else "pinned" if pinned else "unpinned")
        ),
    )
    return EXIT_OK


def cmd_backups_forget(args: argparse.Namespace) -> int:
    """Remove a quarantined (legacy or untrusted) set: the only way one leaves the store."""
    from ..blocks.server_profile import open_backup_store, server_name
    from ..tasks.sets.catalog import forget_quarantined_set
    from ..tasks.sets.manifest import parse_set_reference

    store = open_backup_store(args.store, args.server)
    server, set_id = parse_set_reference(args.set, server_name(args.server))
    result = forget_quarantined_set(store, server, set_id, execute=args.execute)
    emit(
        result,
        args.json,
        render=lambda r: (
            f"{r['set']} ({r['trust']}: {r['reason']}): "
            + (
                f"deleted {r['objects']} objects"
                if r["executed"]
                else f"would delete {r['objects']} objects; add --execute"
            )
        ),
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    api = temporary_server.start_if_needed()
    from ..flows.verify import verify

    temporary_server.wait_ready(api)

    result = verify(
        args.set,
        server=args.server,
        store=args.store,
        drill=args.drill,
        drill_database=args.drill_database,
        read_data=args.read_data,
        allow_legacy=args.allow_legacy,
    )
    emit(result, args.json, render=render_verify)
    return EXIT_OK


def render_prune(result: PruneReport) -> str:
    head = "deleted" if result.executed else "plan (nothing deleted; add --execute)"
    return (
        render_table(
            [row.model_dump(mode="json") for row in result.sets],
            [
                "set_id",
                "server",
                "created_at",
                "action",
                "reasons",
                "verified",
                "pinned",
                "prunable_after",
            ],
        )
        + f"\n{head}: keep {result.keep}, delete {result.delete}"
    )


def cmd_prune(args: argparse.Namespace) -> int:
    from ..blocks.server_profile import server_name
    from ..flows.prune import prune

    result = prune(
        server=None if args.all_servers else server_name(args.server),
        store=args.store,
        keep_last=args.keep_last,
        keep_daily=args.keep_daily,
        keep_weekly=args.keep_weekly,
        keep_monthly=args.keep_monthly,
        execute=args.execute and not args.dry_run,
    )
    emit(result, args.json, render=render_prune)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``backup``, ``backups list``, ``verify`` and ``prune``."""
    store = store_options()

    p = sub.add_parser(
        "backup",
        parents=[common, store, object_lock_options()],
        help="back up a server into a new verified backup set",
        description="Export every agent (files named by agent id; an agent unchanged since "
        "the previous verified set gets that set's file, checked and copied: see "
        "--full-exports), pg_dump the "
        "database with row counts in the same snapshot, write the "
        "manifest last, verify the set from storage. Exit 1 if an "
        "agent could not be exported, unless --allow-partial-agents.",
    )
    p.add_argument(
        "--allow-partial-agents",
        action="store_true",
        help="succeed even if some agents cannot be exported (the dump holds them)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="agent exports in flight against the live server; default "
        "LETTA_OPS_EXPORT_CONCURRENCY, else 1 (measured: bench/live_latency.py)",
    )
    p.add_argument(
        "--dump-priority",
        choices=("low", "normal"),
        default=None,
        help="pg_dump's share of the host beside the live server: low (niceness 10, idle I/O "
        "class; said in the log where the host refuses it) or normal; default "
        "LETTA_OPS_DUMP_PRIORITY, else low",
    )
    p.add_argument(
        "--compress",
        metavar="SPEC",
        default=None,
        help="pg_dump compression: none, a gzip level 0-9, gzip:N, zstd[:N] or lz4[:N] (zstd "
        "and lz4 need a client built with them); default LETTA_OPS_COMPRESS, else the saved "
        "Letta Database block's compression, else gzip:1 (measured against gzip:6 and none: "
        "bench/compression_choice.py). "
        "Recorded in the manifest.",
    )
    p.add_argument(
        "--full-exports",
        action="store_true",
        help="export every agent again; by default an agent whose rows in PostgreSQL are "
        "unchanged since the previous verified set (same Letta version and alembic revision) "
        "gets that set's file, checked against its authenticated manifest and copied "
        "(LETTA_OPS_FULL_EXPORTS=1 does the same)",
    )
    p.add_argument("--pin", action="store_true", help="never let retention delete this set")
    p.set_defaults(func=cmd_backup)

    backups = sub.add_parser("backups", help="list backup sets")
    bsub = backups.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = bsub.add_parser(
        "list",
        # --json and the deprecated --json-list (the plain list), one or the other.
        parents=[common_options(with_json=False), json_list_options("sets"), store],
        help="sets of this server, newest first (complete = has a manifest)",
    )
    p.add_argument("--all-servers", action="store_true", help="every server in the store")
    p.set_defaults(func=cmd_backups_list)
    p = bsub.add_parser(
        "new-key",
        parents=[common],
        help="print a new repository key (stdout) and its id (stderr): encryption or signing",
        description="Print 32 random bytes in base64: a key for LETTA_OPS_ENCRYPTION_KEY, a "
        "key file or the store block's encryption_key. To rotate, make a new key current and "
        "keep the old one listed (LETTA_OPS_PREVIOUS_ENCRYPTION_KEYS or the key file's next "
        "lines) for as long as sets written with it are kept.",
    )
    p.set_defaults(func=cmd_backups_new_key)
    add_adopt_command(bsub, common, store)

    for action, summary in (
        ("pin", "keep a set from retention, until --until DATE or for good"),
        ("unpin", "let retention treat a pinned set like any other"),
    ):
        p = bsub.add_parser(
            action,
            parents=[common, store],
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. Written as a new authenticated "
            "record beside the set (the store is write-once); the newest record decides. "
            "Sets taken before an upgrade, rollback or rename are pinned for "
            "LETTA_OPS_SAFETY_PIN_DAYS (30) days; 'prune' shows when each pin ends.",
        )
        p.add_argument("set", metavar="SET", help="SERVER/SET_ID or SET_ID (see 'backups list')")
        if action == "pin":
            p.add_argument(
                "--until",
                metavar="DATE",
                type=future_date,
                help="end of the pin (YYYY-MM-DD or an ISO time, UTC); default: for good",
            )
        allow_legacy_option(p)
        p.set_defaults(func=cmd_backups_pin)

    p = bsub.add_parser(
        "forget",
        parents=[common, store],
        help="delete a quarantined (UNTRUSTED or LEGACY) set; plan only without --execute",
        description="Retention never deletes a set it cannot believe: one whose manifest or "
        "records fail authentication, or one written before sets were authenticated. This "
        "removes such a set, once you have looked at it. A trusted set is refused (prune "
        "deletes those by policy).",
    )
    p.add_argument("set", metavar="SET", help="SERVER/SET_ID or SET_ID (see 'backups list')")
    p.add_argument("--execute", action="store_true", help="really delete")
    p.set_defaults(func=cmd_backups_forget)

    p = sub.add_parser(
        "verify",
        parents=[common, store],
        help="check a set's checksums and dump; --drill restores it",
        description="Check every object of a set: on S3 by the checksum the store computed at "
        "upload (one metadata request each), elsewhere by re-reading it; read the dump's table "
        "of contents. --read-data re-reads and re-hashes everything; --drill restores the set "
        "into a scratch database and compares per-table counts.",
    )
    p.add_argument("set", metavar="SET", help="SERVER/SET_ID or SET_ID (see 'backups list')")
    p.add_argument("--drill", action="store_true", help="restore into a scratch database")
    p.add_argument(
        "--read-data",
        action="store_true",
        help="download and re-hash every object instead of trusting the store's checksums",
    )
    allow_legacy_option(p)
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
        "sets older than a day are. A set still under S3 Object Lock stays, with the date it "
        "becomes prunable. Deletes only with --execute.",
    )
    p.add_argument("--keep-last", type=non_negative, default=7)
    p.add_argument("--keep-daily", type=non_negative, default=7)
    p.add_argument("--keep-weekly", type=non_negative, default=4)
    p.add_argument("--keep-monthly", type=non_negative, default=6)
    p.add_argument("--all-servers", action="store_true", help="prune every server's sets")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="only show the plan (the default)")
    run.add_argument("--execute", action="store_true", help="really delete")
    p.set_defaults(func=cmd_prune)
