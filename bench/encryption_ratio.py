"""What client-side encryption costs a backup: ``python -m bench.encryption_ratio``.

``--megabytes 256`` (the default) sizes the dump.

Set-up as ``bench.run`` (PostgreSQL 18 + pgvector, moto, Letta 0.16.2 with 25 agents), then
the database grows by incompressible ballast until its dump is about ``--megabytes``. On that
same database, in one run, ``letta-ops backup`` (exports and pg_dump overlapping, manifest,
verification) runs plain and encrypted (AES-256-GCM frames, ``LETTA_OPS_ENCRYPTION_KEY``),
in the order plain, encrypted, encrypted, plain so that a drift of the host favours neither;
the figure is the median encrypted time over the median plain time. The dump's download as a
restore does it (parallel ranges; decrypted on the way when encrypted) is timed beside it.

Figures merge into ``bench/results.json`` under ``encryption_ratio``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.run import BENCH_TABLES, BUCKET, RESULTS_PATH, Environment, grow_database, log, mib  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402

AGENTS = 25
ORDER = ("plain", "encrypted", "encrypted", "plain")


def timed(action) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return round(time.perf_counter() - started, 2), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=256.0)
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    from letta_ops.blocks.server_profile import open_backup_store
    from letta_ops.flows.backup import backup
    from letta_ops.tasks.sets.catalog import load_manifest

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-encryption-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    try:
        env.start_storage()
        server = env.start_letta()
        with LettaClient(server) as client:
            for i in range(AGENTS):
                client.create_agent(offline_agent_body(f"enc-agent-{i:02d}"))
        db = env.database
        figures["ballast"] = grow_database(db, int(args.megabytes * 1_000_000))
        os.environ.update(
            LETTA_BASE_URL=server.base_url,
            LETTA_PG_URI=db.letta_pg_uri(),
            LETTA_OPS_EXTRA_TABLES=",".join(BENCH_TABLES),  # the ballast is not Letta's
            LETTA_OPS_SERVER_NAME="enc",
            LETTA_OPS_STORE=f"s3://{BUCKET}/enc",
            LETTA_OPS_AUDIT_URL=f"sqlite:///{env.root / 'audit.db'}",
        )
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "encrypted": []}
        with prefect_test_harness(server_startup_timeout=90):
            for kind in ORDER:
                if kind == "encrypted":
                    os.environ["LETTA_OPS_ENCRYPTION_KEY"] = key
                else:
                    os.environ.pop("LETTA_OPS_ENCRYPTION_KEY", None)
                seconds, report = timed(lambda: backup(purpose="manual"))
                store = open_backup_store()
                manifest = load_manifest(store, *report.set.split("/"))
                assert (manifest.encryption is not None) == (kind == "encrypted")
                target = env.root / "download.dump"
                download_s, fetched = timed(
                    lambda s=store, m=manifest, t=target: s.download_to(m.dump, t)
                )
                assert fetched.sha256 == manifest.objects[manifest.dump].sha256
                target.unlink()
                stored = manifest.objects[manifest.dump]
                runs[kind].append(
                    {
                        "backup_seconds": seconds,
                        "download_seconds": download_s,
                        "dump_bytes": stored.size,
                        "stored_bytes": stored.stored_bytes,
                    }
                )
                log(f"{kind} backup {seconds} s, dump download {download_s} s")
        os.environ.pop("LETTA_OPS_ENCRYPTION_KEY", None)

        def median(kind: str, field: str) -> float:
            return round(statistics.median(r[field] for r in runs[kind]), 2)

        plain_s, enc_s = median("plain", "backup_seconds"), median("encrypted", "backup_seconds")
        plain_dl, enc_dl = (
            median("plain", "download_seconds"),
            median("encrypted", "download_seconds"),
        )
        dump_bytes = runs["plain"][0]["dump_bytes"]
        figures.update(
            agents=AGENTS,
            dump_bytes=dump_bytes,
            dump_mib=mib(dump_bytes),
            encrypted_stored_bytes=runs["encrypted"][0]["stored_bytes"],
            order=list(ORDER),
            runs=runs,
            plain_backup_seconds_median=plain_s,
            encrypted_backup_seconds_median=enc_s,
            encrypted_over_plain_backup=round(enc_s / plain_s, 2),
            plain_download_seconds_median=plain_dl,
            encrypted_download_seconds_median=enc_dl,
            encrypted_over_plain_download=round(enc_dl / plain_dl, 2),
        )
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        results["encryption_ratio"] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
