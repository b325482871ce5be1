"""How long the command line takes to answer: ``python -m bench.cli_latency [--json]``.

Why: an operator types ``letta-ops --help`` or ``letta-ops backups list`` and waits; a script
calls read-only commands in loops. Each command runs 5 times in a fresh process (after one
untimed warm-up); the median is reported beside the baseline of the same run: a bare
``python -c pass`` of the same interpreter (what no Python CLI can beat). Read-only commands
run against a local directory store and a fresh audit store, configured by environment variables
only, so they start no Prefect server; one more run under ``-X importtime`` records whether each
command imported Prefect at all (goal: none of them does).

The figures are merged into ``bench/results.json`` under ``cli_latency`` (a ``before_cli_package``
entry there, the figures before the ``cli`` package, is kept as it is).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")
RUNS = 5

COMMANDS = {
    "--help": ["--help"],
    "upgrade --help": ["upgrade", "--help"],
    "doctor --help": ["doctor", "--help"],
    "backups list": ["backups", "list", "--json"],
    "history": ["history", "--json"],
    "runtime status": ["runtime", "status", "--json"],
}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False)
    return time.perf_counter() - started


def median_of(argv: list[str], env: dict[str, str]) -> float:
    timed(argv, env)  # warm-up: page cache, .pyc
    return statistics.median(timed(argv, env) for _ in range(RUNS))


def imports_prefect(args: list[str], env: dict[str, str]) -> bool:
    """Whether ``letta-ops ARGS`` imports the ``prefect`` package at all."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "letta_ops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return any(re.search(r"\|\s*prefect$", line.rstrip()) for line in run.stderr.splitlines())


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="letta-ops-cli-bench-"))
    (work / "store").mkdir()
    env = {
        **os.environ,
        "LETTA_OPS_STORE": f"file://{work / 'store'}",
        "LETTA_OPS_AUDIT_URL": f"sqlite:///{work / 'audit.db'}",
        "LETTA_OPS_STATE_DIR": str(work / "state"),
        "LETTA_BASE_URL": "http://127.0.0.1:9",
        "LETTA_OPS_SERVER_NAME": "bench",
    }
    env.pop("PREFECT_API_URL", None)
    # As on an operator's machine (pip compiles at install, Python on first import), the
    # warm-up leaves bytecode caches; without them every run would compile SQLAlchemy anew.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    baseline = median_of([sys.executable, "-c", "pass"], env)
    figures = {}
    for label, args in COMMANDS.items():
        seconds = median_of([sys.executable, "-m", "letta_ops.cli", *args], env)
        figures[label] = {
            "median_s": round(seconds, 3),
            "over_bare_python": round(seconds / baseline, 1),
            "imports_prefect": imports_prefect(args, env),
        }
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": RUNS,
        "bare_python_s": round(baseline, 3),
        "commands": figures,
    }
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    before = (data.get("cli_latency") or {}).get("before_cli_package")
    if before:
        result["before_cli_package"] = before
    data["cli_latency"] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
    else:
        print(f"bare python: {baseline:.3f} s")
        for label, f in figures.items():
            prefect = "imports Prefect" if f["imports_prefect"] else "no Prefect"
            print(
                f"{label:18s} {f['median_s']:6.3f} s  ({f['over_bare_python']}x bare python, "
                f"{prefect})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
