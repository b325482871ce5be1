"""The child process of the dump measurement: ``python -m bench.dump_child`` (JSON on stdin).

Why a separate process: the peak memory of ``dump_to_store`` must be the memory of a process
that does nothing else. moto (which keeps every uploaded byte in *its* memory) runs apart, the
parent runs a Letta client and the bench itself; this child only imports what a backup worker
imports, settles, then streams one ``pg_dump`` into one store while a thread samples its own RSS.

Input (stdin, so the database password never appears in a process argument)::

    {"mode": "probe" | "dump", "store": "s3" | "local", "uri": "...", "bucket": "...",
     "key": "...", "local_root": "...", "part_size": 16777216, "interval": 0.05,
     "tracemalloc": true}

Output: one JSON object on stdout. The S3 endpoint and credentials come from the environment
(``AWS_ENDPOINT_URL`` ...), exactly as for ``letta-ops``.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
import tracemalloc


def _rss() -> int:
    # /proc/self/statm: resident pages; cheaper than psutil and no allocation to speak of.
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ru_maxrss() -> int:
    """The kernel's high-water mark of this process's RSS, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Sampler(threading.Thread):
    """Samples this process's RSS (and its children's, i.e. pg_dump) every ``interval``."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil

        self.interval = interval
        self.me = psutil.Process()
        self.psutil = psutil
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak_rss = _rss()
        self.peak_children_rss = 0

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, _rss())
        children = 0
        for child in self.me.children(recursive=True):
            try:
                children += child.memory_info().rss
            except self.psutil.Error:
                pass
        self.peak_children_rss = max(self.peak_children_rss, children)
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def main() -> int:
    spec = json.load(sys.stdin)
    started = time.perf_counter()
    rss_before_imports = _rss()

    # What a backup worker imports: the dump task, the stores, boto3, the database block.
    import boto3  # noqa: F401

    from letta_ops.blocks.letta_database import LettaDatabase
    from letta_ops.tasks.postgres.dump import dump_to_store
    from letta_ops.tasks.store.local import LocalObjectStore
    from letta_ops.tasks.store.s3 import S3ObjectStore, s3_client_from_env

    gc.collect()
    rss_after_imports = _rss()

    db = LettaDatabase(uri=spec["uri"], extra_tables=spec.get("extra_tables", []))
    if spec["store"] == "s3":
        store = S3ObjectStore(
            s3_client_from_env(), spec["bucket"], part_size=int(spec["part_size"])
        )
        # One cheap request so the client's endpoint/credential machinery is loaded at rest.
        store.exists("bench/does-not-exist")
    else:
        store = LocalObjectStore(spec["local_root"])
    gc.collect()
    time.sleep(0.2)
    rss_at_rest = _rss()
    ru_maxrss_at_rest = _ru_maxrss()
    result: dict = {
        "mode": spec["mode"],
        "store": spec["store"],
        "pid": os.getpid(),
        "rss_before_imports": rss_before_imports,
        "rss_after_imports": rss_after_imports,
        "rss_at_rest": rss_at_rest,
        "ru_maxrss_at_rest": ru_maxrss_at_rest,
        "import_seconds": round(time.perf_counter() - started, 3),
    }
    if spec["mode"] == "probe":
        print(json.dumps(result))
        return 0

    sampler = Sampler(float(spec.get("interval", 0.05)))
    use_tracemalloc = bool(spec.get("tracemalloc", True))
    if use_tracemalloc:
        tracemalloc.start()
        tracemalloc.reset_peak()
        traced_start = tracemalloc.get_traced_memory()[0]
    progressed = 0

    def progress(n: int) -> None:
        nonlocal progressed
        progressed += n

    sampler.start()
    t0 = time.perf_counter()
    try:
        dump = dump_to_store(db, store, spec["key"], progress=progress)
    finally:
        seconds = time.perf_counter() - t0
        sampler.finish()
    if use_tracemalloc:
        traced_end, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["tracemalloc_peak"] = traced_peak - traced_start
        result["tracemalloc_end"] = traced_end - traced_start
    ru_maxrss_end = _ru_maxrss()
    result.update(
        {
            "key": dump.stored.key,
            "dump_bytes": dump.stored.size,
            "sha256": dump.stored.sha256,
            "progress_bytes": progressed,
            "dump_seconds": round(seconds, 3),
            "rows_counted": sum(dump.row_counts.values()),
            "postgres_version": dump.postgres_version,
            "samples": sampler.samples,
            "peak_rss_sampled": sampler.peak_rss,
            "ru_maxrss_end": ru_maxrss_end,
            # The kernel's high-water mark (which no sampling interval can miss) only speaks
            # for the dump if the dump raised it above what start-up had already reached.
            "peak_rss": (ru_maxrss_end if ru_maxrss_end > ru_maxrss_at_rest else sampler.peak_rss),
            "peak_rss_source": ("ru_maxrss" if ru_maxrss_end > ru_maxrss_at_rest else "sampled"),
            "rss_end": _rss(),
            "pg_dump_peak_rss_sampled": sampler.peak_children_rss,
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
