"""A backup and a migrate upgrade while a client writes through Letta's API every 50 ms
(``tests/fixtures/block_writer.py``: memory blocks, since messages need an LLM and 0.14.0's
LLM-free message route fails every call after storing), as users do during an operator's night.

What must hold, by the tests' own SQL and the client's own record:

- the backup set is consistent: its manifest counts the blocks of one moment (no fewer
  than before the backup began, no more than after it ended), and a restore drill of it
  counts exactly what the manifest says;
- the upgrade loses no acknowledged write: every message the server accepted, before, during
  (its safety backup) and after the upgrade, is in the database at the new version;
- writes are refused only while the server is down: every refused write began inside the
  report's ``downtime_window`` (less the client's 5 s timeout), none after the new version
  served; the client counts them (letta-ops cannot: they never reach a server).

PostgreSQL 18, superuser, Letta 0.14.0 -> 0.16.2 (migrate), the session's Prefect server.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from letta_ops.flows.backup import backup
from letta_ops.flows.upgrade import upgrade
from letta_ops.flows.verify import verify
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.block_writer import BlockWriter
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import http_version, sql_scalar

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
#: The writer's request timeout: a write begun just before the stop may fail up to this late.
CLIENT_TIMEOUT = timedelta(seconds=5)


def _blocks(db) -> int:
    return int(sql_scalar(db, "SELECT count(*) FROM block"))


def _stored_load_numbers(db) -> set[int]:
    """The numbers of the client's blocks found in ``block``."""
    values = sql_scalar(
        db, "SELECT coalesce(string_agg(value, ','), '') FROM block WHERE value LIKE 'load-%'"
    )
    return {int(v.removeprefix("load-")) for v in values.split(",") if v}


def test_backup_and_upgrade_while_a_client_writes_every_50_ms(
    start_letta, s3_env, s3_bucket, monkeypatch, prefect_harness, capsys
):
    running = start_letta(FROM_VERSION, "load")
    with running.client() as client:
        seed_agents(client, 2, prefix="load")
    s3, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    db, base_url = running.database, running.server.base_url
    writer = BlockWriter(base_url).start()
    try:
        time.sleep(1)
        assert writer.acknowledged, writer.writes[:3]

        # --- a backup under load: one moment's counts, restored exactly by a drill --------
        before = _blocks(db)
        backed = backup()
        after = _blocks(db)
        manifest = load_manifest(S3ObjectStore(s3, bucket, "backups"), *backed.set.split("/"))
        assert before <= manifest.row_counts["block"] <= after, (before, manifest, after)
        assert after > before  # the client wrote during the backup
        drilled = verify(backed.set, drill=True)
        assert drilled.ok and drilled.drill_result.differences == [], drilled
        assert not writer.refused, writer.refused[:5]  # a backup refuses no write

        # --- a migrate upgrade under load ---------------------------------------------------
        upgraded = upgrade(NEW_VERSION, strategy="migrate")
        assert upgraded.outcome == "succeeded"
        time.sleep(2)  # writes go on at the new version
    finally:
        writes = writer.stop()
    assert http_version(base_url) == NEW_VERSION
    window = upgraded.downtime_window
    assert window is not None and window.stopping_at < window.serving_at

    # No acknowledged write is lost.
    missing = set(writer.acknowledged) - _stored_load_numbers(db)
    assert not missing, sorted(missing)[:20]
    # Refused only while down, never after the new version served.
    refused = writer.refused
    assert refused, "no write was refused: the client did not write during the downtime"
    early = [w for w in refused if w.at < window.stopping_at - CLIENT_TIMEOUT]
    late = [w for w in refused if w.at > window.serving_at]
    assert not early and not late, (early[:3], late[:3], window)
    assert any(w.ok and w.at > window.serving_at for w in writes)  # served again
    down = (window.serving_at - window.stopping_at).total_seconds()
    with capsys.disabled():
        print(
            f"\nload: {len(writes)} writes, {len(writer.acknowledged)} acknowledged and all "
            f"stored, {len(refused)} refused during a {down:.1f} s downtime window "
            f"(report downtime {upgraded.downtime_seconds} s); backup set {backed.set}: "
            f"{manifest.row_counts['block']} blocks (between {before} and {after})"
        )
