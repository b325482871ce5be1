"""What a backup and a restore cost beyond the raw PostgreSQL tools, as an operator runs them:
``python -m bench.fixed_costs [--gigabytes 1] [--rounds 3] [--stores file,s3]
[--exports full,reuse] [--shape conversations|long-history] [--compress gzip:6,gzip:1]
[--shells worker,bare]``.

Why (issue #32): ``bench/backup_ratio.py`` runs the flows inside one warm interpreter, so the
costs an operator pays per command (the interpreter and Prefect imported, flow and task runs
recorded, the verification, the manifest, the audit, and from a bare shell a temporary Prefect
server) never show. Here every letta-ops figure is a *cold command* in a fresh process:

- raw ``pg_dump -Fc`` (with the backup's default compression) of the database into a local file (for
  the file store) or piped into the same moto by boto3's managed upload (for S3);
- ``letta-ops backup`` with a Prefect server already running (``PREFECT_API_URL``: as on a
  worker) and from a bare shell (no ``PREFECT_API_URL``: a temporary Prefect server per command);
- raw ``pg_restore -j 2`` of the raw dump into an empty database against ``letta-ops restore
  SET --database`` of a set into an empty database (both from the file store's set and dump).

Set-up as ``bench.backup_ratio``: PostgreSQL 18 + pgvector, moto in its own process, Letta
0.16.2 with 25 agents, the ``conversations`` shape (or issue #32's ``long-history``) grown to
about ``--gigabytes``; a Prefect
server (``prefect server start``) on loopback for the worker-like runs. The measurements run
interleaved (raw, worker-like, bare shell, per store, per round), each cold (CHECKPOINT, sync,
page cache dropped as root); medians, min and max are reported with each command's phase
timings (from its ``--json``), and merged into ``bench/results.json`` under ``fixed_costs``.
Goal: backup minus raw <= max(3 s, 5 %) worker-like, bare shell <= that + 5 s; restore <= 1.1x.
Each backup runs in each ``--exports`` mode: ``full`` (every agent exported, as the first
backup of a server) and ``reuse`` (the default behaviour on a server unchanged since its
previous set: every agent file copied from it). With ``--compress`` every raw dump and every
backup runs at each compression given (``backup --compress C``); the restores use the first.
The restores read the set from the first store given: with ``s3`` first, the set is
downloaded from moto as a restore from S3 is, against ``pg_restore -j 2`` of a local file (the
raw dump of the same compression, written once before the rounds when no file store runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import bench.long_history  # noqa: E402
from bench.backup_ratio import (  # noqa: E402
    raw_pg_dump,
    raw_pg_dump_to_store,
    raw_pg_restore,
    start_cold,
)
from bench.long_history import grow_long_history  # noqa: E402
from bench.run import (  # noqa: E402
    BENCH_TABLES,
    BUCKET,
    RESULTS_PATH,
    Environment,
    grow_conversations,
    log,
    mib,
    wait_for_http,
)
from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402
from letta_ops.tasks.postgres.embedded import free_loopback_port  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import create_database, drop_database  # noqa: E402

AGENTS = 25
ROUNDS = 3


def start_prefect_server(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A Prefect server of its own on loopback, as a worker host has one: its API URL."""
    port = free_loopback_port()
    home = root / "prefect-server"
    home.mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its uvicorn child goes with it: stopped as one group
    )
    wait_for_http(f"http://127.0.0.1:{port}/api/health", proc, timeout=180)
    return proc, f"http://127.0.0.1:{port}/api"


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and its children, by its group id."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def letta_ops(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict[str, Any]]:
    """One cold ``letta-ops`` command: its wall time and its ``--json`` document. Run in
    ``cwd``, never the checkout: ``python -m`` puts the working directory first on the path,
    where the checkout's ``letta_ops/`` would shadow ``--before``'s tree."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "letta_ops.cli", *argv, "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = round(time.perf_counter() - started, 2)
    if done.returncode != 0:
        raise RuntimeError(f"letta-ops {argv[0]} exit {done.returncode}: {done.stdout[-2000:]}")
    return took, json.loads(done.stdout)


def phases(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"phase": p["name"], "seconds": round(p["seconds"], 2)} for p in report["phases"]]


def ordered(codes: dict[str, Any], round_number: int) -> list[str]:
    """The trees' order in a round: alternated, so neither always runs first."""
    names = list(codes)
    return names if round_number % 2 == 0 else names[::-1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--stores", default="file,s3", help="file, s3 or both (comma)")
    parser.add_argument("--label", default="", help="a name for this run in results.json")
    parser.add_argument(
        "--no-restores",
        action="store_true",
        help="backups only (a change to the backup path: the restores' rounds cost minutes)",
    )
    parser.add_argument(
        "--exports",
        default="full,reuse",
        help="full (every agent exported, as a first backup: LETTA_OPS_FULL_EXPORTS=1), reuse "
        "(the default: the server is unchanged since the previous set, so every agent file is "
        "copied), or both (comma)",
    )
    parser.add_argument(
        "--shape",
        choices=("conversations", "long-history"),
        default="conversations",
        help="conversations: Letta-like rows in the bench's own tables; long-history: messages "
        "of varied text in Letta's own table over the 25 agents (issue #32's shape)",
    )
    parser.add_argument(
        "--compress",
        default="",
        help="compressions to run every raw dump and backup at (comma, e.g. gzip:6,gzip:1); "
        "empty: the backup's default only. The restores use the first",
    )
    parser.add_argument(
        "--shells",
        default="worker,bare",
        help="worker (a Prefect server running), bare (a temporary Prefect server per "
        "command), or both (comma)",
    )
    parser.add_argument(
        "--generation-budget",
        type=float,
        default=bench.long_history.GENERATION_BUDGET_SECONDS,
        help="seconds the long-history shape may take to grow (2 GB takes several minutes)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a tree of the code before a change (a folder holding letta_ops/ with blocks, "
        "cli, flows, tasks): its commands run interleaved with this tree's, for A/B figures",
    )
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    shells = [s for s in args.shells.split(",") if s]
    #: Each compression's name suffix and backup arguments ("" : the default, no flag).
    compressions = {
        (f" {c}" if c else ""): (["--compress", c] if c else [])
        for c in (args.compress.split(",") if args.compress else [""])
    }
    first_compression = next(iter(compressions.values()))
    #: Each export mode's name suffix and environment (the variable, not --full-exports: an
    #: older tree given with --before does not know the flag, and always exports).
    modes = {
        mode: (" full-exports", {"LETTA_OPS_FULL_EXPORTS": "1"}) if mode == "full" else ("", {})
        for mode in args.exports.split(",")
        if mode
    }

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-fixed-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    prefect_server = None
    try:
        env.start_storage()
        server = env.start_letta()
        with LettaClient(server) as client:
            agent_ids = [
                client.create_agent(offline_agent_body(f"fixed-agent-{i:02d}"))["id"]
                for i in range(AGENTS)
            ]
        db = env.database
        assert db is not None
        target_bytes = int(args.gigabytes * 1_000_000_000)
        if args.shape == "long-history":
            bench.long_history.GENERATION_BUDGET_SECONDS = args.generation_budget
            figures[args.shape] = grow_long_history(db, agent_ids, target_bytes)
        else:
            figures[args.shape] = grow_conversations(db, target_bytes)
        (env.root / "store").mkdir()
        store_urls = {"file": f"file://{env.root / 'store'}", "s3": f"s3://{BUCKET}/fixed"}
        base = {
            **env.child_env,
            "LETTA_BASE_URL": server.base_url,
            "LETTA_PG_URI": db.letta_pg_uri(),
            "LETTA_OPS_EXTRA_TABLES": ",".join(BENCH_TABLES),
            "LETTA_OPS_SERVER_NAME": "fixed",
            "LETTA_OPS_AUDIT_URL": f"sqlite:///{env.root / 'audit.db'}",
        }
        base.pop("PREFECT_API_URL", None)
        prefect_server, api_url = start_prefect_server(env.root, base)
        log(f"Prefect server at {api_url}")
        worker_env = {**base, "PREFECT_API_URL": api_url}
        bare_env = {**base, "PREFECT_HOME": str(env.root / "prefect-bare")}
        dump_path = env.root / "raw.dump"
        restore_store = stores[0]
        if restore_store != "file" and not args.no_restores:
            # The raw restore's file: the raw dump at the restores' compression, written once.
            figures["dump_bytes"] = raw_pg_dump(db, dump_path, *first_compression[1:])
        codes = {"now": dict}
        if args.before:
            codes["before"] = lambda e: {**e, "PYTHONPATH": str(args.before.resolve())}

        # Untimed: the bare shell's Prefect database is created and migrated once, as on an
        # operator's host after the first command.
        letta_ops(["backup", "--store", store_urls[stores[0]]], bare_env, env.root)
        by_shell = {"worker": worker_env, "bare": bare_env}
        seconds: dict[str, list[float]] = {}
        last_phases: dict[str, Any] = {}
        sets: dict[str, str] = {}
        for round_number in range(args.rounds):
            for kind, (zsuffix, zargs) in [(k, z) for k in stores for z in compressions.items()]:
                url = store_urls[kind]
                compression = zargs[1:]  # [] for the default
                start_cold(db)
                started = time.perf_counter()
                if kind == "file":
                    dump_bytes = raw_pg_dump(db, dump_path, *compression)
                    figures[f"dump_bytes{zsuffix}"] = dump_bytes
                else:
                    raw_pg_dump_to_store(db, f"raw-dump/{round_number}.dump", *compression)
                seconds.setdefault(f"{kind} raw pg_dump{zsuffix}", []).append(
                    round(time.perf_counter() - started, 2)
                )
                for shell in shells:
                    for code in ordered(codes, round_number):
                        for suffix, mode_env in modes.values():
                            start_cold(db)
                            took, report = letta_ops(
                                ["backup", "--store", url, *zargs],
                                codes[code]({**by_shell[shell], **mode_env}),
                                env.root,
                            )
                            name = f"{kind} backup {shell}" + ("" if code == "now" else " before")
                            name += suffix + zsuffix
                            seconds.setdefault(name, []).append(took)
                            last_phases[name] = phases(report)
                            if zargs == first_compression:
                                sets[kind] = report["set"]
            log(f"round {round_number + 1}: " + ", ".join(
                f"{k} {v[-1]} s" for k, v in seconds.items()
            ))  # fmt: skip

            # Restores: raw pg_restore -j 2 of the raw dump against `restore SET --database`.
            if not args.no_restores:
                if restore_store == "file" and len(compressions) > 1:
                    raw_pg_dump(db, dump_path, *first_compression[1:])  # the restores' dump
                target = LettaDatabase(uri=env.postgres.uri("fixed_target"))
                for kind in ("raw", *(f"letta-ops {c}" for c in ordered(codes, round_number))):
                    create_database(target)
                    start_cold(db)
                    if kind == "raw":
                        started = time.perf_counter()
                        raw_pg_restore(target, dump_path)
                        took = round(time.perf_counter() - started, 2)
                    else:
                        uri = (
                            f"postgresql://{quote(env.postgres.superuser)}@127.0.0.1:"
                            f"{env.postgres.port}/fixed_target"
                        )
                        took, report = letta_ops(
                            ["restore", sets[restore_store], "--database", uri, "--yes"]
                            + ["--store", store_urls[restore_store]],
                            codes[kind.split()[-1]](
                                {**worker_env, "PGPASSWORD": env.postgres.password}
                            ),
                            env.root,
                        )
                        last_phases[f"restore {kind}"] = phases(report)
                    seconds.setdefault(f"restore {kind}", []).append(took)
                    drop_database(target)
                log(f"restore round {round_number + 1}: " + ", ".join(
                    f"{k} {v[-1]} s" for k, v in seconds.items() if k.startswith("restore")
                ))  # fmt: skip

        medians = {k: summary(v) for k, v in seconds.items()}
        comparisons = {}
        for kind, zsuffix in [(k, z) for k in stores for z in compressions]:
            raw = medians[f"{kind} raw pg_dump{zsuffix}"]["median"]
            for shell in shells:
                for code_suffix, (mode_suffix, _env) in [
                    (c, m)
                    for c in (("", " before") if args.before else ("",))
                    for m in modes.values()
                ]:
                    name = f"{kind} backup {shell}{code_suffix}{mode_suffix}{zsuffix}"
                    ours = medians[name]["median"]
                    comparisons[name] = {
                        "over_raw": round(ours / raw, 2),
                        "minus_raw_seconds": round(ours - raw, 2),
                        "goal_seconds": round(max(3.0, 0.05 * raw) + (5 * (shell == "bare")), 2),
                    }
        if not args.no_restores:
            raw = medians["restore raw"]["median"]
            for code in codes:
                ours = medians[f"restore letta-ops {code}"]["median"]
                comparisons[f"restore {code}"] = {
                    "over_raw": round(ours / raw, 2),
                    "minus_raw_seconds": round(ours - raw, 2),
                    "goal_ratio": 1.1,
                }
        figures.update(
            dump_mib=mib(figures.get("dump_bytes")),
            agents=AGENTS,
            rounds=args.rounds,
            load_average_after=os.getloadavg(),
            seconds=medians,
            comparisons=comparisons,
            phases_last_round=last_phases,
        )
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        point = f"{args.gigabytes:g}GB {args.shape}" + (f" {args.label}" if args.label else "")
        results.setdefault("fixed_costs", {})[point] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        if prefect_server is not None:
            stop_group(prefect_server)
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
