"""The private Prefect functions letta-ops still uses, pinned so a Prefect upgrade fails here.

Why: ``tasks/runs/lock.py`` takes and renews the destructive lock's lease with Prefect 3.8's
private lease functions (the public ``concurrency()`` hides the lease id a holder must record).
A Prefect release that moves or changes them must fail this test, not an upgrade at 2 a.m.
Everything else letta-ops imports from Prefect is public API; this test also proves that.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: module -> names letta-ops may import from it, and why
ALLOWED_PRIVATE = {
    "prefect.concurrency._sync": {"acquire_concurrency_slots_with_lease"},
    "prefect.concurrency._leases": {"maintain_concurrency_lease"},
}


def test_only_the_pinned_private_prefect_imports_are_used() -> None:
    found: dict[str, set[str]] = {}
    for folder in ("letta_ops", "blocks", "flows", "tasks", "cli"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefect"):
                    if any(part.startswith("_") for part in node.module.split(".")):
                        found.setdefault(node.module, set()).update(a.name for a in node.names)
    assert found == ALLOWED_PRIVATE


def test_the_private_lease_functions_still_take_what_letta_ops_passes() -> None:
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    acquire = inspect.signature(acquire_concurrency_slots_with_lease).parameters
    assert {"names", "slots", "timeout_seconds", "strict", "lease_duration"} <= set(acquire)
    maintain = inspect.signature(maintain_concurrency_lease).parameters
    assert {"lease_id", "lease_duration", "raise_on_lease_renewal_failure"} <= set(maintain)
