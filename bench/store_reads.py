"""Bench section 3: what verification and restores read from S3.

Run by ``python -m bench.run`` (after the dump section) or alone with
``python -m bench.run --only store-reads`` (PostgreSQL and moto only, about a minute; the
figures are merged into ``bench/results.json`` under ``store_reads``).

1. **Verification of one backup set**: 25 agent files of ~21 KB (the export section's mean) and
   a real ``pg_dump`` of about 64 MiB (the issue's dump size), all uploaded by letta-ops, so S3
   keeps a SHA-256 of each. Default verification (one metadata request per object plus the
   dump's table of contents) against ``read_data`` (every object read back and hashed): the
   plain functions the verify flow's tasks wrap, order M R R M M R, medians and the ratio.
2. **Download of the same dump into a file**, as a restore does: parallel byte ranges
   (``S3ObjectStore.download_to``, 8 MiB ranges, 4 workers) against one stream (the base
   ``ObjectStore.download_to``, what restores did before), both checked by sha256. Twice:
   straight to moto, and through a loopback proxy that caps each connection at 32 MiB/s. Why
   the proxy: moto answers every ranged GET by copying the whole object under a per-key lock
   (``FakeKey.value``), so on moto ranges can only lose; S3 serves a range without reading the
   rest and limits what one connection carries, which is why AWS advises parallel byte-range
   GETs for large objects. The proxy models that limit; its figure is a model, moto's is not.
   ``moto_ranged_gets_one_by_one_seconds`` (the same ranges fetched by one thread, nothing
   else) against ``moto_single_get_seconds`` shows what moto's ranges cost by themselves.
   Verification is measured through the proxy too.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres.dump import dump_to_store
from letta_ops.tasks.postgres.letta_schema import connect, create_database
from letta_ops.tasks.sets.manifest import (
    DUMP_NAME,
    MANIFEST_NAME,
    AgentEntry,
    BackupManifest,
    ManifestObject,
    agent_file_key,
    set_prefix,
)
from letta_ops.tasks.sets.verification import check_dump, check_objects, reads_back
from letta_ops.tasks.store.objects import (
    DOWNLOAD_PART_SIZE,
    DOWNLOAD_WORKERS,
    ObjectStore,
    StoredObject,
)
from letta_ops.tasks.store.s3 import S3ObjectStore

MiB = 1024 * 1024
AGENTS = 25
AGENT_FILE_BYTES = 21_561
#: Rows of 1 MiB (bytea); pg_dump writes bytea as hex, so the uncompressed dump is ~2x.
BALLAST_ROWS = 32
ROUNDS = 3
ORDER = ("baseline", "ours", "ours", "baseline", "baseline", "ours")
PROXY_RATE = 32 * MiB
SET_ID = "20261123T000000Z-storereads"


def log(message: str) -> None:
    print(f"[bench store-reads] {message}", flush=True)


# ------------------------------------------------------------------------------------------
# A loopback proxy that caps each connection's throughput
# ------------------------------------------------------------------------------------------


class ThrottledProxy:
    """Forwards 127.0.0.1:<port> to ``target``; each connection carries at most ``rate`` bytes
    per second in each direction (token bucket, 256 KiB burst)."""

    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self.target = target
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        burst = 256 * 1024
        tokens, last = float(burst), time.monotonic()
        try:
            while data := src.recv(65536):
                now = time.monotonic()
                tokens = min(burst, tokens + (now - last) * self.rate)
                last = now
                if tokens < len(data):
                    time.sleep((len(data) - tokens) / self.rate)
                    tokens, last = float(len(data)), time.monotonic()
                tokens -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def s3_client(endpoint: str) -> Any:
    """A boto3 client for ``endpoint`` configured as ``s3_client_from_env`` configures one."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


# ------------------------------------------------------------------------------------------
# The set
# ------------------------------------------------------------------------------------------


def ballast_database(admin: LettaDatabase) -> LettaDatabase:
    """A database of ``BALLAST_ROWS`` rows of 1 MiB, beside the bench's Letta database."""
    db = admin.for_database("bench_store_reads").model_copy(update={"extra_tables": ["ballast"]})
    create_database(db, with_pgvector=False)
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE ballast (id int PRIMARY KEY, payload bytea)"))
        conn.execute(sa.text("ALTER TABLE ballast ALTER payload SET STORAGE EXTERNAL"))
        conn.execute(
            sa.text(
                "INSERT INTO ballast SELECT i, decode(repeat(md5(i::text), 65536), 'hex') "
                "FROM generate_series(1, :rows) i"
            ),
            {"rows": BALLAST_ROWS},
        )
    return db


def write_set(store: S3ObjectStore, db: LettaDatabase) -> BackupManifest:
    """Agent files, an uncompressed pg_dump and the manifest, as the backup flow writes them."""
    prefix = set_prefix("bench", SET_ID)
    agents = [
        store.put_bytes(agent_file_key(prefix, f"agent-{i:03d}"), os.urandom(AGENT_FILE_BYTES))
        for i in range(AGENTS)
    ]
    dump = dump_to_store(db, store, prefix + DUMP_NAME, compression="none")
    now = datetime.now(UTC)
    manifest = BackupManifest(
        set_id=SET_ID,
        server="bench",
        created_at=now,
        completed_at=now,
        letta_version="0.16.2",
        alembic_revision=None,
        base_url="http://127.0.0.1:8283",
        database_name=db.database_name,
        db_schema="public",
        postgres_version=dump.postgres_version,
        pgvector_version=dump.pgvector_version,
        row_counts=dump.row_counts,
        dump=dump.stored.key,
        dump_compression=dump.compression,
        agents=[
            AgentEntry(id=f"agent-{i:03d}", name=f"agent {i}", file=o.key)
            for i, o in enumerate(agents)
        ],
        objects={o.key: _manifest_object(o) for o in [*agents, dump.stored]},
    )
    store.put_bytes(prefix + MANIFEST_NAME, manifest.to_json())
    return BackupManifest.from_json(store.read_bytes(prefix + MANIFEST_NAME))


def _manifest_object(stored: StoredObject) -> ManifestObject:
    return ManifestObject(
        size=stored.size, sha256=stored.sha256, store_checksum=stored.store_checksum
    )


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------


def alternate(baseline: Callable[[], Any], ours: Callable[[], Any]) -> dict[str, Any]:
    """Time both in ``ORDER`` after one untimed warm-up of each; medians and the ratio."""
    baseline()
    ours()
    runs: dict[str, list[float]] = {"baseline": [], "ours": []}
    for kind in ORDER:
        started = time.perf_counter()
        (baseline if kind == "baseline" else ours)()
        runs[kind].append(time.perf_counter() - started)
    b, o = statistics.median(runs["baseline"]), statistics.median(runs["ours"])
    return {
        "baseline_seconds": [round(s, 3) for s in runs["baseline"]],
        "letta_ops_seconds": [round(s, 3) for s in runs["ours"]],
        "baseline_median_seconds": round(b, 3),
        "letta_ops_median_seconds": round(o, 3),
        "ratio_baseline_over_letta_ops": round(b / o, 2),
    }


def verification(store: S3ObjectStore, manifest: BackupManifest, read_data: bool) -> int:
    """Check the set as ``verify`` does; returns the bytes read from the store."""
    problems = check_objects(store, manifest, read_data=read_data)
    dump = check_dump(store, manifest)
    if problems or dump["tables_missing"]:
        raise RuntimeError(f"the bench set failed verification: {problems or dump}")
    read_back = [o for o in manifest.objects.values() if reads_back(o, read_data)]
    return sum(o.size for o in read_back) + dump["bytes_read"]


def measure_verification(store: S3ObjectStore, manifest: BackupManifest) -> dict[str, Any]:
    figures = alternate(
        lambda: verification(store, manifest, read_data=True),
        lambda: verification(store, manifest, read_data=False),
    )
    return {
        "baseline": (
            "read_data=True (every object read back and hashed; verification before this "
            "change also read the dump a second time for pg_restore --list)"
        ),
        "letta_ops": "default (store SHA-256 by HEAD + the dump's table of contents)",
        "objects": len(manifest.objects),
        "set_bytes": sum(o.size for o in manifest.objects.values()),
        "bytes_read_read_data": verification(store, manifest, read_data=True),
        "bytes_read_default": verification(store, manifest, read_data=False),
        **figures,
    }


def download(store: ObjectStore, key: str, path: Path, expected: str, parallel: bool) -> None:
    """One download into ``path``; ``parallel=False`` is the base class's single stream."""
    fetched = (
        store.download_to(key, path) if parallel else ObjectStore.download_to(store, key, path)
    )
    if fetched.sha256 != expected:
        raise RuntimeError(f"the downloaded {key} does not match its sha256")


def measure_download(store: S3ObjectStore, manifest: BackupManifest, tmp: Path) -> dict[str, Any]:
    key, expected = manifest.dump, manifest.objects[manifest.dump].sha256
    return alternate(
        lambda: download(store, key, tmp / "single", expected, parallel=False),
        lambda: download(store, key, tmp / "ranges", expected, parallel=True),
    )


def moto_range_cost(store: S3ObjectStore, key: str, size: int) -> dict[str, float]:
    """One GET of the whole object against the download's ranges fetched one by one by one
    thread: what moto's ranged GETs cost by themselves (median of ``ROUNDS``)."""

    def single() -> None:
        with store.open_read(key) as body:
            while body.read(MiB):
                pass

    def ranges() -> None:
        for start in range(0, size, DOWNLOAD_PART_SIZE):
            length = min(DOWNLOAD_PART_SIZE, size - start)
            with store.open_read(key, start=start, length=length) as body:
                while body.read(MiB):
                    pass

    def median_seconds(action: Callable[[], None]) -> float:
        runs = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            action()
            runs.append(time.perf_counter() - started)
        return round(statistics.median(runs), 3)

    return {
        "moto_single_get_seconds": median_seconds(single),
        "moto_ranged_gets_one_by_one_seconds": median_seconds(ranges),
    }


def measure_store_reads(admin: LettaDatabase, endpoint: str, bucket: str) -> dict[str, Any]:
    """Section 3 of the bench (see the module docstring)."""
    started = time.perf_counter()
    log(f"database of {BALLAST_ROWS} x 1 MiB rows and a set of {AGENTS} agent files + dump")
    db = ballast_database(admin)
    direct = S3ObjectStore(s3_client(endpoint), bucket, "store-reads")
    manifest = write_set(direct, db)
    dump = manifest.objects[manifest.dump]
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = ThrottledProxy((host, int(port)), PROXY_RATE)
    throttled = S3ObjectStore(s3_client(proxy.url), bucket, "store-reads")
    cap = f"{PROXY_RATE // MiB} MiB/s-per-connection proxy"
    try:
        log("verification: default (baseline: read_data), straight to moto ...")
        verification = measure_verification(direct, manifest)
        log(f"verification: the same, through a {cap} ...")
        verification["moto_behind_capped_proxy"] = measure_verification(throttled, manifest)
        with tempfile.TemporaryDirectory(prefix="letta-ops-bench-reads-") as tmp:
            log("download: parallel ranges (baseline: one stream), straight to moto ...")
            straight = measure_download(direct, manifest, Path(tmp))
            straight.update(moto_range_cost(direct, manifest.dump, dump.size))
            log(f"download: the same, through a {cap} ...")
            capped = measure_download(throttled, manifest, Path(tmp))
    finally:
        proxy.close()
    checksum = dump.store_checksum
    results: dict[str, Any] = {
        "dump_bytes": dump.size,
        "dump_store_checksum": f"{checksum.algorithm} {checksum.type}" if checksum else None,
        "per_connection_cap_mib_per_s": PROXY_RATE // MiB,
        "verification": verification,
        "download": {
            "baseline": "one stream (ObjectStore.download_to, as restores did before)",
            "letta_ops": f"{DOWNLOAD_WORKERS} workers x {DOWNLOAD_PART_SIZE // MiB} MiB ranges",
            "moto": straight,
            "moto_behind_capped_proxy": capped,
        },
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def render_store_reads(figures: dict[str, Any]) -> list[str]:
    v, d = figures["verification"], figures["download"]
    capped = f"moto, {figures['per_connection_cap_mib_per_s']} MiB/s per connection"
    lines = [
        f"3. Store reads: a set of {v['objects']} objects, dump {figures['dump_bytes'] / MiB:.1f} "
        f"MiB ({figures['dump_store_checksum']}), medians of {ROUNDS} runs each "
        "(ratio: baseline / letta-ops)",
        f"   verification reads {v['bytes_read_read_data'] / MiB:.1f} MiB with read_data, "
        f"{v['bytes_read_default'] / MiB:.2f} MiB by default",
    ]
    for label, r in (("moto", v), (capped, v["moto_behind_capped_proxy"])):
        lines.append(
            f"   verification ({label}): read_data {r['baseline_median_seconds']:.3f} s, "
            f"default {r['letta_ops_median_seconds']:.3f} s: "
            f"{r['ratio_baseline_over_letta_ops']:.2f}x"
        )
    for label, r in (("moto", d["moto"]), (capped, d["moto_behind_capped_proxy"])):
        lines.append(
            f"   download ({label}): one stream {r['baseline_median_seconds']:.2f} s, ranges "
            f"{r['letta_ops_median_seconds']:.2f} s: {r['ratio_baseline_over_letta_ops']:.2f}x"
        )
    m = d["moto"]
    lines.append(
        f"   moto alone: one GET {m['moto_single_get_seconds']:.2f} s, the same ranges one by "
        f"one {m['moto_ranged_gets_one_by_one_seconds']:.2f} s (moto copies the whole object "
        "for every range)"
    )
    return lines
