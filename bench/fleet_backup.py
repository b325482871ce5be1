"""Fleet backup on two workers against the same backups one after another:
``python -m bench.fleet_backup [--servers 4] [--agents 10]``.

Set-up (all on 127.0.0.1, torn down at the end): PostgreSQL 18 + pgvector and moto (as
``bench.run`` does), N real Letta 0.16.2 servers with a few agents each, a Prefect server
(``prefect_test_harness``), a process work pool with the ``backup`` deployment from
``prefect.yaml`` (``prefect deploy``) and two ``prefect worker start`` processes.

Measured, in the order baseline, fleet, fleet, baseline (medians of two each):

- **baseline**: ``backup(server=NAME)`` for each server, one after another, in this process;
- **fleet**: ``fleet_backup`` of the same servers: one deployment run per server on the two
  workers, at most 2 at once per store and per database host (all N databases live on one
  PostgreSQL here, so the host limit is 2, not the default 1).

The ratio baseline / fleet goes into ``bench/results.json`` under ``fleet_backup`` (> 1: the
fleet is faster). Each child of the fleet pays a worker's process start (Python, Prefect and
letta-ops imports), which the in-process baseline does not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.run import BUCKET, Environment, log  # noqa: E402
from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.blocks.letta_server import LettaServer  # noqa: E402
from letta_ops.blocks.process_runtime import LettaProcessRuntime  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402
from letta_ops.tasks.postgres.embedded import free_loopback_port  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import create_database  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
LETTA_VERSION = "0.16.2"
TAG = "bench:fleet"


def start_servers(env: Environment, count: int, agents: int) -> list[LettaProcessRuntime]:
    """N migrated and started Letta servers, each on a database of its own, saved as blocks."""

    def one(index: int) -> LettaProcessRuntime:
        name = f"bench-fleet-{index}"
        database = LettaDatabase(uri=env.postgres.uri(f"fleet_{index}"))
        create_database(database)
        runtime = LettaProcessRuntime(
            server_name=name, port=free_loopback_port(), state_dir=env.root / name
        )
        runtime.migrate(LETTA_VERSION, database, log=lambda _m: None)
        runtime.start(LETTA_VERSION, database, log=lambda _m: None)
        server = LettaServer(name=name, base_url=runtime.base_url, tags=[TAG])
        with LettaClient(server) as client:
            for i in range(agents):
                client.create_agent(offline_agent_body(f"{name}-agent-{i:02d}"))
        log(f"{name}: Letta {LETTA_VERSION} with {agents} agents at {runtime.base_url}")
        return server, database, runtime

    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(one, range(count)))
    for server, database, runtime in started:  # one at a time: block types register once
        server.save(server.name, overwrite=True)
        database.save(server.name, overwrite=True)
        runtime.save(server.name, overwrite=True)
    return [runtime for _, _, runtime in started]


def start_workers(api_url: str) -> list[subprocess.Popen]:
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "LETTA_OPS_HOME": str(REPO),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
    }
    for argv in (
        [prefect, "work-pool", "create", "letta-ops", "--type", "process"],
        [prefect, "--no-prompt", "deploy", "-n", "backup"],
    ):
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0 and "already exists" not in done.stdout:
            raise RuntimeError(f"{' '.join(argv[1:3])} failed: {done.stdout[-2000:]}")
    return [
        subprocess.Popen(
            [prefect, "worker", "start", "--pool", "letta-ops", "--type", "process"]
            + ["--name", f"bench-worker-{i}", "--limit", "1"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for i in (1, 2)
    ]


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for proc in workers:  # only what this bench started, by its process group
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def baseline(names: list[str]) -> float:
    from letta_ops.flows.backup import backup

    started = time.monotonic()
    for name in names:
        backup(server=name)
    return round(time.monotonic() - started, 2)


def fleet() -> tuple[float, Any]:  # the FleetBackupReport
    from letta_ops.flows.fleet_backup import fleet_backup

    started = time.monotonic()
    report = fleet_backup(servers=TAG, per_store_limit=2, per_host_limit=2)
    return round(time.monotonic() - started, 2), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--agents", type=int, default=10)
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-fleet-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    runtimes: list[LettaProcessRuntime] = []
    workers: list[subprocess.Popen] = []
    try:
        env.start_storage()
        os.environ["LETTA_OPS_STORE"] = f"s3://{BUCKET}/fleet"
        os.environ["LETTA_OPS_AUDIT_URL"] = f"sqlite:///{env.root / 'audit.db'}"
        with prefect_test_harness(server_startup_timeout=90):
            runtimes = start_servers(env, args.servers, args.agents)
            names = [r.server_name for r in runtimes]
            workers = start_workers(PREFECT_API_URL.value())
            order = ["baseline", "fleet", "fleet", "baseline"]
            seconds: dict[str, list[float]] = {"baseline": [], "fleet": []}
            workers_seen: set[str] = set()
            for kind in order:
                if kind == "baseline":
                    seconds[kind].append(baseline(names))
                else:
                    took, report = fleet()
                    seconds[kind].append(took)
                    workers_seen |= {r.worker for r in report.servers if r.worker}
                log(f"{kind}: {seconds[kind][-1]} s")
        base, fast = statistics.median(seconds["baseline"]), statistics.median(seconds["fleet"])
        figures = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "servers": args.servers,
            "agents_per_server": args.agents,
            "workers": sorted(workers_seen),
            "order": order,
            "baseline_seconds": seconds["baseline"],
            "fleet_seconds": seconds["fleet"],
            "baseline_median_seconds": base,
            "fleet_median_seconds": fast,
            "ratio_baseline_over_fleet": round(base / fast, 2),
            "limits": {"per_store": 2, "per_host": 2},
        }
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results["fleet_backup"] = figures
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        stop_workers(workers)
        for runtime in runtimes:
            runtime.stop()
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
