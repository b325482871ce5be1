"""What a restore costs beyond raw ``pg_restore -j 2``, as an operator runs it:
``python -m bench.restore_costs [--gigabytes 0.5] [--rounds 3] [--before TREE]``.

Why (issue #32, item 2: a restore at most 1.1x raw ``pg_restore -j N``): ``bench.fixed_costs``
measures backups and restores in one run, and its backups (three commands per round) take most
of its time; a change to the restore path needs only the restore's figures, interleaved with
the code before the change. Same set-up (PostgreSQL 18 + pgvector, Letta 0.16.2 with 25 agents,
the ``conversations`` shape grown to about ``--gigabytes``, a Prefect server on loopback as a
worker has one), one backup set written to a file store and one raw ``pg_dump -Fc`` of the
database; then per round, each cold (CHECKPOINT, sync, page cache dropped as root), in
alternating order: raw ``pg_restore -j 2`` of the raw dump into an empty database, and the cold
command ``letta-ops restore SET --database URI --yes`` of the set into an empty database (this
tree, and ``--before``'s). Medians, min and max, each command's phase timings and the seconds
outside them (the cold process: imports, flow and task-run bookkeeping, exit) are merged into
``bench/results.json`` under ``restore_costs``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.backup_ratio import raw_pg_dump, raw_pg_restore, start_cold  # noqa: E402
from bench.fixed_costs import (  # noqa: E402
    AGENTS,
    letta_ops,
    ordered,
    phases,
    start_prefect_server,
    stop_group,
    summary,
)
from bench.run import (  # noqa: E402
    BENCH_TABLES,
    RESULTS_PATH,
    Environment,
    grow_conversations,
    log,
    mib,
)
from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.tasks.letta.api import LettaClient, offline_agent_body  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import create_database, drop_database  # noqa: E402


def outside_phases(took: float, report: dict[str, Any]) -> float:
    """The command's seconds that no phase of its report accounts for: the cold process."""
    return round(took - sum(p["seconds"] for p in report["phases"]), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j of both sides")
    parser.add_argument("--label", default="", help="a name for this run in results.json")
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        help="a tree of the code before a change (a folder holding letta_ops/): its restores "
        "run interleaved with this tree's, for A/B figures; repeat it for several (named "
        "'before' alone, else by their folder names)",
    )
    args = parser.parse_args(argv)

    env = Environment(Path(tempfile.mkdtemp(prefix="letta-ops-bench-restore-")))
    os.chmod(env.root, 0o755)  # PostgreSQL runs as the unprivileged `postgres` user
    figures: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    prefect_server = None
    try:
        env.start_storage()
        server = env.start_letta()
        with LettaClient(server) as client:
            for i in range(AGENTS):
                client.create_agent(offline_agent_body(f"restore-agent-{i:02d}"))
        db = env.database
        assert db is not None
        figures["conversations"] = grow_conversations(db, int(args.gigabytes * 1_000_000_000))
        (env.root / "store").mkdir()
        store_url = f"file://{env.root / 'store'}"
        base = {
            **env.child_env,
            "LETTA_BASE_URL": server.base_url,
            "LETTA_PG_URI": db.letta_pg_uri(),
            "LETTA_OPS_EXTRA_TABLES": ",".join(BENCH_TABLES),
            "LETTA_OPS_SERVER_NAME": "restorecost",
            "LETTA_OPS_AUDIT_URL": f"sqlite:///{env.root / 'audit.db'}",
        }
        base.pop("PREFECT_API_URL", None)
        # An operator's pip install compiles bytecode; a cold command here without it compiles
        # every module again (7 s of a 23 s restore under load, measured with cProfile).
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        prefect_server, api_url = start_prefect_server(env.root, base)
        log(f"Prefect server at {api_url}")
        worker_env = {**base, "PREFECT_API_URL": api_url, "PGPASSWORD": env.postgres.password}
        codes = {"now": dict}
        for tree in args.before:
            name = "before" if len(args.before) == 1 else tree.name
            codes[name] = lambda e, tree=tree: {**e, "PYTHONPATH": str(tree.resolve())}
        _, report = letta_ops(["backup", "--store", store_url], worker_env, env.root)
        backup_set = report["set"]
        dump_path = env.root / "raw.dump"
        figures["dump_bytes"] = raw_pg_dump(db, dump_path)

        target = LettaDatabase(uri=env.postgres.uri("restore_target"))
        uri = (
            f"postgresql://{quote(env.postgres.superuser)}@127.0.0.1:"
            f"{env.postgres.port}/restore_target"
        )
        restore_argv = ["restore", backup_set, "--database", uri, "--store", store_url]
        create_database(target)
        for code in codes:  # untimed: each tree's bytecode written once, as an install does
            letta_ops([*restore_argv, "--dry-run"], codes[code](worker_env), env.root)
        drop_database(target)
        seconds: dict[str, list[float]] = {}
        outside: dict[str, list[float]] = {}
        last_phases: dict[str, Any] = {}
        by_phase: dict[str, dict[str, list[float]]] = {}
        for round_number in range(args.rounds):
            kinds = ["raw", *(f"letta-ops {c}" for c in ordered(codes, round_number))]
            if round_number % 2:
                kinds = kinds[::-1]
            for kind in kinds:
                create_database(target)
                start_cold(db)
                if kind == "raw":
                    started = time.perf_counter()
                    raw_pg_restore(target, dump_path, jobs=args.jobs)
                    took = round(time.perf_counter() - started, 2)
                else:
                    took, report = letta_ops(
                        [*restore_argv, "--yes", "--jobs", str(args.jobs)],
                        codes[kind.split()[-1]](worker_env),
                        env.root,
                    )
                    last_phases[kind] = phases(report)
                    for p in phases(report):
                        by_phase.setdefault(kind, {}).setdefault(p["phase"], []).append(
                            p["seconds"]
                        )
                    outside.setdefault(kind, []).append(outside_phases(took, report))
                seconds.setdefault(kind, []).append(took)
                drop_database(target)
            log(f"round {round_number + 1}: " + ", ".join(
                f"{k} {v[-1]} s" for k, v in seconds.items()
            ))  # fmt: skip

        medians = {k: summary(v) for k, v in seconds.items()}
        raw = medians["raw"]["median"]
        comparisons = {
            code: {
                "over_raw": round(medians[f"letta-ops {code}"]["median"] / raw, 2),
                "minus_raw_seconds": round(medians[f"letta-ops {code}"]["median"] - raw, 2),
                "outside_phases_median": summary(outside[f"letta-ops {code}"])["median"],
                "goal_ratio": 1.1,
            }
            for code in codes
        }
        figures.update(
            dump_mib=mib(figures["dump_bytes"]),
            agents=AGENTS,
            rounds=args.rounds,
            jobs=args.jobs,
            load_average_after=os.getloadavg(),
            seconds=medians,
            comparisons=comparisons,
            phases_last_round=last_phases,
            phase_medians={
                kind: {name: summary(values)["median"] for name, values in named.items()}
                for kind, named in by_phase.items()
            },
        )
        results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
        point = f"{args.gigabytes:g}GB conversations" + (f" {args.label}" if args.label else "")
        results.setdefault("restore_costs", {})[point] = figures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        if prefect_server is not None:
            stop_group(prefect_server)
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
