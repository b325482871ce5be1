"""What authenticated sets cost a backup and a restore: ``python -m bench.authentication_ratio``.

``--megabytes 256`` (the default) sizes the dump.

Set-up as ``bench.encryption_ratio`` (PostgreSQL 18 + pgvector, moto, Letta 0.16.2 with 25
agents, incompressible ballast). On that same database, in one run, a ``letta-ops backup``
(exports and pg_dump overlapping, manifest, verification) and a restore of its set into a new
database (``restore_database_from_set``, recreate mode, after ``load_manifest``) run in a
*keyless* repository and in one with a signing key (``LETTA_OPS_SIGNING_KEY``: every manifest,
verification record and catalog read authenticated, reads pinned by If-Match), in the order
keyless, signed, signed, keyless so a drift of the host favours neither. Both sets are
plaintext, so both restores download the dump first: the difference is authentication alone.
The figure is the median signed time over the median keyless time.

Figures merge into ``bench/results.json`` under ``authentication_ratio``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.encryption_ratio import AGENTS, timed  # noqa: E402
from bench.run import BENCH_TABLES, BUCKET, RESULTS_PATH, Environment, grow_database, log, mib  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402

ORDER = ("keyless", "signed", "signed", "keyless")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=256.0)
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    from letta_ops.blocks.server_profile import open_backup_store
    from letta_ops.flows.backup import backup
    from letta_ops.flows.steps.restore_server import restore_database_from_set
    from letta_ops.tasks.postgres.letta_schema import create_database, drop_database
    from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-authentication-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    try:
        env.start_storage()
        server = env.start_letta()
        with LettaClient(server) as client:
            for i in range(AGENTS):
                client.create_agent(offline_agent_body(f"auth-agent-{i:02d}"))
        db = env.database
        figures["ballast"] = grow_database(db, int(args.megabytes * 1_000_000))
        os.environ.update(
            LETTA_BASE_URL=server.base_url,
            LETTA_PG_URI=db.letta_pg_uri(),
            LETTA_OPS_EXTRA_TABLES=",".join(BENCH_TABLES),  # the ballast is not Letta's
            LETTA_OPS_SERVER_NAME="auth",
            LETTA_OPS_STORE=f"s3://{BUCKET}/auth",
            LETTA_OPS_AUDIT_URL=f"sqlite:///{env.root / 'audit.db'}",
        )
        runs: dict[str, list[dict[str, Any]]] = {"keyless": [], "signed": []}
        with prefect_test_harness(server_startup_timeout=90):
            for kind in ORDER:
                if kind == "signed":
                    os.environ["LETTA_OPS_SIGNING_KEY"] = key
                else:
                    os.environ.pop("LETTA_OPS_SIGNING_KEY", None)
                backup_s, report = timed(lambda: backup(purpose="manual"))
                store = open_backup_store()
                list_s, listed = timed(lambda s=store: list_backup_sets(s, "auth"))
                manifest = load_manifest(store, *report.set.split("/"))
                mine = next(s for s in listed if f"{s.server}/{s.set_id}" == report.set)
                assert mine.trust == ("trusted" if kind == "signed" else "keyless"), mine
                target = db.for_database(f"auth_restore_{uuid.uuid4().hex[:8]}").model_copy(
                    update={"reset_mode": "recreate"}
                )
                create_database(target, with_pgvector=True)
                try:
                    restore_s, restored = timed(
                        lambda t=target, s=store, m=manifest: restore_database_from_set(t, s, m, 2)
                    )
                    assert not restored["count_differences"]
                finally:
                    drop_database(target)
                runs[kind].append(
                    {
                        "backup_seconds": backup_s,
                        "restore_seconds": restore_s,
                        "list_seconds": list_s,
                        "dump_bytes": manifest.objects[manifest.dump].size,
                    }
                )
                log(f"{kind}: backup {backup_s} s, restore {restore_s} s, list {list_s} s")
        os.environ.pop("LETTA_OPS_SIGNING_KEY", None)

        def median(kind: str, field: str) -> float:
            return round(statistics.median(r[field] for r in runs[kind]), 2)

        dump_bytes = runs["keyless"][0]["dump_bytes"]
        figures.update(
            agents=AGENTS,
            dump_bytes=dump_bytes,
            dump_mib=mib(dump_bytes),
            order=list(ORDER),
            runs=runs,
            **{
                f"{kind}_{field}_median": median(kind, field)
                for kind in runs
                for field in ("backup_seconds", "restore_seconds")
            },
            signed_over_keyless_backup=round(
                median("signed", "backup_seconds") / median("keyless", "backup_seconds"), 3
            ),
            signed_over_keyless_restore=round(
                median("signed", "restore_seconds") / median("keyless", "restore_seconds"), 3
            ),
        )
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        results["authentication_ratio"] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
