"""What a backup costs the live server's users: ``python -m bench.live_latency [--gigabytes 0.3]
[--rounds 3]``.

Set-up as ``bench.compression_choice`` (PostgreSQL 18 + pgvector, moto, Letta 0.16.2 with 25
agents, the long-history shape, one Prefect server). A sampler in a process of its own (so
the backup's threads never hold its interpreter lock) sends ``GET /v1/agents/{id}`` to the
server one after the other, round-robin over the agents, 20 ms apart, and records each
latency with its wall time. Each round, in an order that alternates (the host is shared and
noisy):

- **idle**: 20 s with no backup;
- **unbounded**: ``backup(dump_priority="normal", concurrency=8)``: pg_dump as started, eight
  exports in flight (the load before the bounds);
- **P priority, N exports** for each P of ``--priorities`` (``low``: pg_dump at niceness 10
  in the idle I/O class; ``normal``) and each N of ``--concurrencies`` (1, 2, 4): N exports in
  flight.

Reported: p50/p95/max latency per window (and, for a backup, while its agent exports ran and
after them: the server answers its users and the exports in one process), each round's p95
over its idle p95, and the medians over the rounds. Goal (issue #32): the bounded backup's p95
within 2x idle. moto runs at niceness 19: it stands in for a store on another machine, whose CPU
is not the server's.
Figures merge into ``bench/results.json`` under ``live_latency``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.long_history import grow_long_history  # noqa: E402
from bench.run import BENCH_TABLES, BUCKET, RESULTS_PATH, Environment, log  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402

AGENTS = 25
IDLE_SECONDS = 20.0
SAMPLE_PAUSE = 0.02
#: The load before the bounds: pg_dump as started, eight exports in flight.
UNBOUNDED = {"dump_priority": "normal", "concurrency": 8}


def backup_kinds(concurrencies: list[int], priorities: list[str]) -> dict[str, dict[str, Any]]:
    """Each backup kind the bench compares, by name: the flow's arguments."""
    kinds: dict[str, dict[str, Any]] = {"unbounded": UNBOUNDED}
    for priority in priorities:
        for n in concurrencies:
            kinds[f"{priority} priority, {n} export{'s' if n > 1 else ''}"] = {
                "dump_priority": priority,
                "concurrency": n,
            }
    return kinds


def sample(base_url: str, agent_ids: list[str]) -> None:
    """The sampler process: GET each agent in turn until stdin closes; prints
    ``[[wall_time, seconds], ...]`` as JSON."""
    import threading

    import httpx

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    samples: list[list[float]] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            agent_id = agent_ids[n % len(agent_ids)]
            started = time.perf_counter()
            client.get(f"/v1/agents/{agent_id}").raise_for_status()
            samples.append([time.time(), time.perf_counter() - started])
            n += 1
            time.sleep(SAMPLE_PAUSE)
    print(json.dumps(samples))


def window(samples: list[list[float]], start: float, end: float) -> dict[str, float]:
    """Latency figures (milliseconds) of the requests that began between ``start`` and ``end``."""
    values = sorted(s for t, s in samples if start <= t <= end)
    if len(values) < 5:  # a server so slow it answered almost nothing: no percentile
        return {"requests": len(values)}
    return {
        "requests": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p95_ms": round(statistics.quantiles(values, n=20)[18] * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrencies",
        default="1,2,4",
        help="export concurrencies to compare (comma-separated)",
    )
    parser.add_argument(
        "--priorities",
        default="low",
        help="pg_dump priorities to compare at each concurrency (low, normal; comma-separated)",
    )
    parser.add_argument("--sample", nargs=2, metavar=("BASE_URL", "AGENT_IDS"), help="internal")
    args = parser.parse_args(argv)
    kinds_by_name = backup_kinds(
        [int(n) for n in args.concurrencies.split(",")], args.priorities.split(",")
    )
    if args.sample:
        sample(args.sample[0], args.sample[1].split(","))
        return 0

    import psutil
    from prefect.testing.utilities import prefect_test_harness

    from letta_ops.flows.backup import backup

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-latency-")))
    os.chmod(env.root, 0o755)
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    sampler = None
    try:
        env.start_storage()
        psutil.Process(env.moto.pid).nice(19)
        server = env.start_letta()
        with LettaClient(server) as client:
            ids = [
                client.create_agent(offline_agent_body(f"latency-agent-{i:02d}"))["id"]
                for i in range(AGENTS)
            ]
        db = env.database
        figures["long-history"] = grow_long_history(db, ids, int(args.gigabytes * 1e9))
        os.environ.update(
            LETTA_BASE_URL=server.base_url,
            LETTA_PG_URI=db.letta_pg_uri(),
            LETTA_OPS_EXTRA_TABLES=",".join(BENCH_TABLES),
            LETTA_OPS_SERVER_NAME="latency",
            LETTA_OPS_STORE=f"s3://{BUCKET}/latency",
            LETTA_OPS_AUDIT_URL=f"sqlite:///{env.root / 'audit.db'}",
        )
        marks: list[tuple[int, str, float, float, str]] = []
        exports: dict[tuple[int, str], tuple[float, float]] = {}  # the export phase's window
        with prefect_test_harness(server_startup_timeout=90):
            sampler = subprocess.Popen(
                [sys.executable, "-m", "bench.live_latency", "--sample", server.base_url]
                + [",".join(ids)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(5)  # the sampler's first requests warm the server's caches
            for round_number in range(args.rounds):
                shift = round_number % len(kinds_by_name)
                kinds = list(kinds_by_name)[shift:] + list(kinds_by_name)[:shift]
                order = ["idle", *kinds]
                for kind in order:
                    started = time.time()
                    if kind == "idle":
                        time.sleep(IDLE_SECONDS)
                        note = ""
                    else:
                        report = backup(**kinds_by_name[kind])
                        note = str(report.dump_bytes)
                        for phase in report.phases:
                            if phase.name == "export":
                                begun = phase.started_at.timestamp()
                                exports[round_number, kind] = (begun, begun + phase.seconds)
                    marks.append((round_number, kind, started, time.time(), note))
                    log(f"round {round_number + 1} {kind}: {time.time() - started:.1f} s")
                    time.sleep(3)  # the server settles between windows
            samples = json.loads(sampler.communicate(input="", timeout=60)[0])
        rounds: list[dict[str, Any]] = []
        for round_number in range(args.rounds):
            row: dict[str, Any] = {}
            for r, kind, start, end, note in marks:
                if r == round_number:
                    row[kind] = {**window(samples, start, end), "seconds": round(end - start, 1)}
                    if note:
                        row[kind]["dump_bytes"] = int(note)
                    if (r, kind) in exports:
                        begun, ended = exports[r, kind]
                        row[kind]["during_exports"] = window(samples, begun, ended)
                        row[kind]["after_exports"] = window(samples, ended, end)
            for kind in kinds_by_name:
                if "p95_ms" in row[kind] and "p95_ms" in row["idle"]:
                    over = row[kind]["p95_ms"] / row["idle"]["p95_ms"]
                    row[kind]["p95_over_idle"] = round(over, 2)
            rounds.append(row)
        medians = {
            kind: {
                key: statistics.median(row[kind][key] for row in rounds if key in row[kind])
                for key in ("p50_ms", "p95_ms", "max_ms", "seconds")
                + (("p95_over_idle",) if kind != "idle" else ())
            }
            for kind in ("idle", *kinds_by_name)
        }
        figures.update(
            agents=AGENTS,
            kinds={"idle": "no backup", **{k: v or "defaults" for k, v in kinds_by_name.items()}},
            sampler=f"GET /v1/agents/{{id}} round-robin, {SAMPLE_PAUSE * 1000:g} ms apart, "
            "in a process of its own",
            rounds=rounds,
            medians=medians,
            goal="bounded p95_over_idle <= 2",
        )
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        results.setdefault("live_latency", {})[f"{args.gigabytes:g}GB long-history"] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(medians, indent=2))
        return 0
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()
            sampler.wait()
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
