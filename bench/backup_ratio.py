"""Backup and restore at storage speed: ``python -m bench.backup_ratio [--gigabytes 1]
[--shape ballast|conversations|long-history] [--second-backups N] [--no-restores]``.

Set-up as ``bench.run`` (PostgreSQL 18 + pgvector, moto in its own process, Letta 0.16.2 with
25 agents), then the database grows: ``ballast`` (the default) adds incompressible rows until
the dump is about ``--gigabytes`` (the download is as large as it gets); ``conversations``
adds Letta-like messages and passages until the *database* is about ``--gigabytes`` (rows
that compress, indexes to build: a restore bound by PostgreSQL, as the issue's 1.35 GB one
was); ``long-history`` (``bench/long_history.py``) adds messages of varied text to Letta's own
``messages`` table, spread over the 25 agents, until the database is about ``--gigabytes``
(issue #32's 2 GB shape). Measured in one run, each beside its baseline on the same database
and dump:

- **backup**: ``letta-ops backup`` (exports and pg_dump overlapping, the manifest last, the set
  verified) against the slower of its two raw parts: the agents exported concurrently
  (``export_agents``, 4 at once, to the same store) and ``pg_dump -Fc`` of the same database
  to a local file. Goal (issue #15): <= 1.3x at about 1 GB, <= 1.15x at 5 GB. Beside it, for
  the store's share: the same pg_dump piped into the same moto by boto3's managed upload
  (``pg_dump | aws s3 cp -``).
- **restore**: ``restore_database_from_set`` into an empty database, once per reset mode
  (``recreate``: restored beside it while the dump downloads, each table's indexes built as
  soon as its rows are in, then swapped in; ``in-place``:
  downloaded in parallel ranges first, then ``pg_restore -j 2``; both with sequences and
  per-table counts), and the weekly drill (streamed into a scratch database), each against raw
  ``pg_restore -j 2`` of the same dump file; three rounds of all four, medians. Goal: <= 1.2x.

Every measured run starts cold: a CHECKPOINT, ``sync`` and the page cache dropped (as root;
see :func:`start_cold`).

Every ratio is given twice (issue #32): against the slower raw part (``max(export, dump)``;
for a restore ``max(download, pg_restore)``) and against raw ``pg_dump`` (``pg_restore``)
alone, which is what an operator who ran the runbook's command compares with. The raw dump
uses the backup's own compression (the default, :data:`DEFAULT_COMPRESSION`); the runbook's
bare ``pg_dump -Fc`` (gzip:6) is timed beside it.

- **unchanged server** (``--second-backups N``, issue #32): N rounds, cold and interleaved, of
  raw ``pg_dump``, a backup with ``full_exports`` (every agent exported: what a first backup
  does) and a backup of the unchanged server, whose agent files are reused from the previous
  set; medians and the reused counts (``unchanged_server``).

Beside the figures, the backup report's phase timings (``backup_phases``) and each restore
kind's phases of its last round (``phases_last_round``): where the time beyond the raw parts
went.

Figures merge into ``bench/results.json`` under ``backup_ratio``. 5 GB takes too long on a
two-core host to run routinely; pass ``--gigabytes 5`` to measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.long_history import grow_long_history  # noqa: E402
from bench.run import (  # noqa: E402
    BENCH_TABLES,
    BUCKET,
    RESULTS_PATH,
    Environment,
    grow_conversations,
    grow_database,
    log,
    mib,
)
from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.cli.output import phases_lines  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402
from letta_ops.tasks.postgres.dump import tool, tool_env  # noqa: E402
from letta_ops.tasks.postgres.dump_compression import DEFAULT_COMPRESSION  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import connect, create_database, drop_database  # noqa: E402
from letta_ops.tasks.runs.phase_timings import PhaseClock, PhaseTiming  # noqa: E402
from letta_ops.tasks.sets.agent_export import export_agents  # noqa: E402
from letta_ops.tasks.store.s3 import S3ObjectStore, s3_client_from_env  # noqa: E402

AGENTS = 25
RESTORE_ROUNDS = 3
RESTORE_KINDS = ("recreate", "in-place", "drill")


#: Where the kernel is asked to drop its page cache (root only; elsewhere a no-op).
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def start_cold(db: LettaDatabase) -> dict[str, bool]:
    """Start a measurement with nothing dirty and nothing cached: a CHECKPOINT (PostgreSQL
    writes what the last run left in its buffers), ``sync`` and the kernel's page cache dropped.

    Why: the measurements run one after another on the same files. A restore leaves a
    gigabyte of dirty buffers and WAL that the next run's checkpoint writes; at 5 GB the page
    cache cannot hold the database, the dump file and moto's copies at once, so whichever ran
    first read from memory and the later ones from disk. Those order effects (100 s at 5 GB,
    a fifth of a 20 s restore) were larger than what is measured. The cache is dropped only
    as root; ``page_cache_dropped`` in the figures says whether it was.
    """
    done = {"checkpoint": False, "page_cache_dropped": False}
    try:
        with connect(db, autocommit=True) as conn:
            conn.execute(sa.text("CHECKPOINT"))
        done["checkpoint"] = True
    except sa.exc.SQLAlchemyError:
        pass  # a role without pg_checkpoint: the runs keep that order effect
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
        done["page_cache_dropped"] = True
    except OSError:
        pass
    return done


def phase_seconds(phases: list[PhaseTiming]) -> list[dict[str, Any]]:
    """A report's phases as the figures store them: where the time went, in order."""
    return [{"phase": p.name, "seconds": round(p.seconds, 2)} for p in phases]


def timed(action, db: LettaDatabase) -> tuple[float, Any]:
    start_cold(db)
    started = time.perf_counter()
    result = action()
    return round(time.perf_counter() - started, 2), result


def raw_pg_dump(db: LettaDatabase, path: Path, compression: str = DEFAULT_COMPRESSION) -> int:
    subprocess.run(
        [tool(db, "pg_dump"), "--format=custom", f"--compress={compression}", "--file", str(path)],
        env=tool_env(db),
        check=True,
    )
    return path.stat().st_size


def raw_pg_dump_to_store(
    db: LettaDatabase, key: str, compression: str = DEFAULT_COMPRESSION
) -> None:
    """What an operator's script does without letta-ops: ``pg_dump -Fc | aws s3 cp -`` (boto3's
    managed upload of the pipe, its default 8 MiB parts and 10 threads) into the same moto."""
    proc = subprocess.Popen(
        [tool(db, "pg_dump"), "--format=custom", f"--compress={compression}"],
        env=tool_env(db),
        stdout=subprocess.PIPE,
    )
    try:
        s3_client_from_env().upload_fileobj(proc.stdout, BUCKET, key)
    finally:
        if proc.wait() != 0:
            raise RuntimeError(f"pg_dump failed (exit {proc.returncode})")


def raw_pg_restore(db: LettaDatabase, path: Path, jobs: int = 2) -> None:
    subprocess.run(
        [tool(db, "pg_restore"), "--no-owner", f"--jobs={jobs}", "--dbname", db.database_name]
        + [str(path)],
        env=tool_env(db),
        check=False,  # an extension that exists already is reported, not fatal
        capture_output=True,
    )


def unchanged_server(db: LettaDatabase, dump_path: Path, rounds: int, backup) -> dict[str, Any]:
    """Issue #32's reuse, measured: per round, cold and in this order, raw ``pg_dump``, a
    backup with ``full_exports`` (every agent exported, as a first backup) and a backup of the
    unchanged server (every agent file reused from the previous set); medians, the reused
    counts and the last round's phases."""
    seconds: dict[str, list[float]] = {"raw pg_dump": [], "first (full exports)": [], "second": []}
    reused: dict[str, list[int]] = {"first (full exports)": [], "second": []}
    phases: dict[str, Any] = {}
    for round_number in range(rounds):
        took, _ = timed(lambda: raw_pg_dump(db, dump_path), db)
        seconds["raw pg_dump"].append(took)
        for name, full in (("first (full exports)", True), ("second", False)):
            took, report = timed(lambda full=full: backup(full_exports=full), db)
            seconds[name].append(took)
            reused[name].append(report.agents_reused)
            phases[name] = phase_seconds(report.phases)
        log(f"unchanged server, round {round_number + 1}: " + ", ".join(
            f"{k} {v[-1]} s" for k, v in seconds.items()
        ))  # fmt: skip
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "seconds": seconds,
        "median_seconds": medians,
        "agents_reused": reused,
        "second_over_raw_pg_dump": round(medians["second"] / medians["raw pg_dump"], 2),
        "second_minus_raw_pg_dump": round(medians["second"] - medians["raw pg_dump"], 2),
        "first_over_raw_pg_dump": round(
            medians["first (full exports)"] / medians["raw pg_dump"], 2
        ),
        "phases_last_round": phases,
        "load_average_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument(
        "--shape",
        choices=("ballast", "conversations", "long-history"),
        default="ballast",
        help="ballast: incompressible rows until the dump is about --gigabytes; conversations: "
        "Letta-like messages and passages until the database is about --gigabytes; "
        "long-history: messages of varied text in Letta's own table over the 25 agents",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=RESTORE_ROUNDS,
        help="rounds of the four restores (medians are reported; 1 at 5 GB saves 30 minutes)",
    )
    parser.add_argument(
        "--second-backups",
        type=int,
        default=0,
        help="rounds of raw pg_dump, a backup with --full-exports (what a first backup does) "
        "and a second backup of the unchanged server (its agent files reused), cold and "
        "interleaved; medians (issue #32)",
    )
    parser.add_argument("--no-restores", action="store_true", help="skip the restore rounds")
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    from letta_ops.flows.backup import backup
    from letta_ops.flows.steps.restore_server import restore_database_from_set
    from letta_ops.tasks.sets.catalog import load_manifest
    from letta_ops.tasks.sets.verification import drill

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-ratio-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        env.start_storage()
        server = env.start_letta()
        with LettaClient(server) as client:
            agents = [
                client.create_agent(offline_agent_body(f"ratio-agent-{i:02d}"))
                for i in range(AGENTS)
            ]
        db = env.database
        figures["before_each_run"] = start_cold(db)
        target = int(args.gigabytes * 1_000_000_000)
        if args.shape == "long-history":
            figures[args.shape] = grow_long_history(db, [a["id"] for a in agents], target)
        else:
            grow = grow_database if args.shape == "ballast" else grow_conversations
            figures[args.shape] = grow(db, target)
        store = S3ObjectStore(s3_client_from_env(), BUCKET, "ratio")
        os.environ.update(
            LETTA_BASE_URL=server.base_url,
            LETTA_PG_URI=db.letta_pg_uri(),
            LETTA_OPS_EXTRA_TABLES=",".join(BENCH_TABLES),  # the ballast is not Letta's
            LETTA_OPS_SERVER_NAME="ratio",
            LETTA_OPS_STORE=f"s3://{BUCKET}/ratio",
            LETTA_OPS_AUDIT_URL=f"sqlite:///{env.root / 'audit.db'}",
        )
        dump_path = env.root / "raw.dump"
        listed = [{"id": a["id"], "name": a["name"]} for a in agents]
        with prefect_test_harness(server_startup_timeout=90):
            with LettaClient(server) as client:
                export_s, _ = timed(
                    lambda: export_agents(client, listed, store, "raw-exports/", 4), db
                )
            runbook_s, runbook_bytes = timed(
                lambda: raw_pg_dump(db, env.root / "runbook.dump", "gzip:6"), db
            )
            (env.root / "runbook.dump").unlink()
            dump_s, dump_bytes = timed(lambda: raw_pg_dump(db, dump_path), db)
            to_store_s, _ = timed(lambda: raw_pg_dump_to_store(db, "raw-dump/database.dump"), db)
            backup_s, report = timed(backup, db)
            log(
                f"raw export {export_s} s, raw pg_dump {dump_s} s (into the store {to_store_s} s), "
                f"letta-ops backup {backup_s} s"
            )
            log("backup " + (phases_lines(report.phases) or ["phases: none"])[0])
            manifest = load_manifest(store, *report.set.split("/"))
            if args.second_backups:
                figures["unchanged_server"] = unchanged_server(
                    db, dump_path, args.second_backups, backup
                )
            if args.no_restores:
                args.rounds = 0

            # Restores in rounds (raw, recreate, in-place, drill), medians of RESTORE_ROUNDS:
            # one restore of a 1 GB dump varies by a second or more on two shared cores.
            seconds: dict[str, list[float]] = {k: [] for k in ("raw", "download", *RESTORE_KINDS)}
            differences: dict[str, int] = {}
            restore_phases: dict[str, list[PhaseTiming]] = {}  # the last round's, by kind
            for round_number in range(args.rounds):
                raw_target = LettaDatabase(uri=env.postgres.uri("ratio_raw"))
                create_database(raw_target)
                took, _ = timed(
                    lambda raw_target=raw_target: raw_pg_restore(raw_target, dump_path), db
                )
                seconds["raw"].append(took)
                drop_database(raw_target)
                took, _ = timed(
                    lambda: s3_client_from_env().download_file(
                        BUCKET, f"ratio/{report.set}/database.dump", str(env.root / "dl.dump")
                    ),
                    db,
                )
                seconds["download"].append(took)
                (env.root / "dl.dump").unlink()
                for mode in ("recreate", "in-place"):
                    target = LettaDatabase(uri=env.postgres.uri("ratio_ops"), reset_mode=mode)
                    create_database(target)
                    clock = PhaseClock()
                    took, restored = timed(
                        lambda target=target, clock=clock: restore_database_from_set(
                            target, store, manifest, 2, clock.phase
                        ),
                        db,
                    )
                    restore_phases[mode] = clock.timings()
                    drop_database(target)
                    seconds[mode].append(took)
                    differences[mode] = len(restored["count_differences"])
                clock = PhaseClock()
                took, drilled = timed(
                    lambda clock=clock: drill(store, manifest, db, jobs=2, phase=clock.phase), db
                )
                restore_phases["drill"] = clock.timings()
                seconds["drill"].append(took)
                differences["drill"] = len(drilled["differences"])
                log(f"restore round {round_number + 1}: " + ", ".join(
                    f"{kind} {values[-1]} s" for kind, values in seconds.items()
                ))  # fmt: skip
            if args.no_restores:  # placeholders, dropped from the figures below
                seconds = {k: [1.0] for k in seconds}
                restore_phases = {k: [] for k in RESTORE_KINDS}
                differences = dict.fromkeys(RESTORE_KINDS, 0)
            raw_restore_s = statistics.median(seconds["raw"])
            download_s = statistics.median(seconds["download"])
            restores = {
                kind: {
                    "median_seconds": statistics.median(seconds[kind]),
                    "seconds": seconds[kind],
                    "over_raw": round(statistics.median(seconds[kind]) / raw_restore_s, 2),
                    "over_slower_of_download_and_raw_restore": round(
                        statistics.median(seconds[kind]) / max(download_s, raw_restore_s), 2
                    ),
                    "count_differences": differences[kind],
                    "phases_last_round": phase_seconds(restore_phases[kind]),
                }
                for kind in RESTORE_KINDS
            }
        slower = max(export_s, dump_s)
        figures.update(
            dump_bytes=dump_bytes,
            dump_mib=mib(dump_bytes),
            agents=AGENTS,
            raw_export_seconds=export_s,
            raw_pg_dump_seconds=dump_s,
            backup_seconds=backup_s,
            backup_phases=phase_seconds(report.phases),
            backup_over_slower_raw=round(backup_s / slower, 2),
            backup_over_raw_pg_dump=round(backup_s / dump_s, 2),
            compression=DEFAULT_COMPRESSION,
            runbook_pg_dump_gzip6_seconds=runbook_s,
            runbook_pg_dump_gzip6_bytes=runbook_bytes,
            backup_over_runbook_pg_dump=round(backup_s / runbook_s, 2),
            raw_download_seconds=download_s,
            raw_pg_dump_into_store_seconds=to_store_s,
            backup_over_raw_pg_dump_into_store=round(backup_s / max(export_s, to_store_s), 2),
            backup_goal="<= 1.3 at ~1 GB, <= 1.15 at 5 GB",
            raw_pg_restore_seconds=raw_restore_s,
            raw_pg_restore_runs=seconds["raw"],
            restore={
                "recreate (streamed beside the live database, indexes built as each table's "
                "rows are in, then swapped in)": restores["recreate"],
                "in-place (downloaded in parallel ranges, then pg_restore -j 2)": restores[
                    "in-place"
                ],
                "drill (streamed into a scratch database)": restores["drill"],
            },
            restore_goal="<= 1.2",
        )
        if args.no_restores:  # nothing was restored: no restore figures
            for name in ("raw_download_seconds", "raw_pg_restore_seconds", "raw_pg_restore_runs"):
                figures.pop(name)
            figures.pop("restore"), figures.pop("restore_goal")
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        point = f"{args.gigabytes:g}GB" + ("" if args.shape == "ballast" else f" {args.shape}")
        point += "" if DEFAULT_COMPRESSION == "gzip:6" else f" {DEFAULT_COMPRESSION}"
        point += " unchanged server" if args.second_backups else ""
        results.setdefault("backup_ratio", {})[point] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
