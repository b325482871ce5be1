"""Encrypted, locked sets and the backup, prune and restore *flows* under the README's IAM
roles, on a real Letta server.

``tests/test_least_privilege.py`` proves each role's store operations one by one; this runs the
real ``backup`` flow (exports, pg_dump, manifest, verification) with the *backup* role's
credentials only, encrypted and locked; ``verify --drill`` with the key and with a wrong one;
``prune`` under the *prune* role; and the real ``restore`` flow onto another database with the
*restore* role's credentials only; all against moto's IAM evaluation (its own ``moto_server`` on
127.0.0.1, stopped by its pid). Counts are the tests' own SQL.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from letta_ops.flows.backup import backup
from letta_ops.flows.prune import prune
from letta_ops.flows.restore import restore
from letta_ops.flows.verify import verify
from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest
from letta_ops.tasks.store.encryption_keys import (
    EncryptionKeyMissing,
    MasterKey,
    new_key,
    parse_key,
)
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, seed_agents
from tests.fixtures.oracle import sql_agents, sql_table_counts
from tests.test_least_privilege import PREFIX, iam_moto, roles  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

SERVER = "least-privilege"


def _as_role(monkeypatch, credentials: dict, endpoint: str, role: str) -> None:
    key, secret = credentials[f"{role}-credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


def test_encrypted_locked_sets_under_the_backup_prune_and_restore_roles(
    iam_moto,  # noqa: F811
    roles,  # noqa: F811
    start_letta,
    make_database,
    pg_cluster,
    s3_env,
    monkeypatch,
    prefect_harness,
):
    running = start_letta(NEW_VERSION, "least-privilege")
    with running.client() as client:
        seed_agents(client, 3)
    bucket = roles["bucket"]
    monkeypatch.setenv("LETTA_BASE_URL", running.server.base_url)
    monkeypatch.setenv("LETTA_PG_URI", running.database.letta_pg_uri())
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", SERVER)
    monkeypatch.setenv("LETTA_OPS_STORE", f"s3://{bucket}/{PREFIX}")
    for name in ("LETTA_OPS_LOCK_DAYS", "LETTA_OPS_LOCK_MODE", "LETTA_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    key = new_key()
    key_id = parse_key(key, "test").key_id
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", key)

    # --- the backup flow, with credentials that may only put new objects and read -----------
    _as_role(monkeypatch, roles, iam_moto, "backup")
    report = backup(lock_days=1)
    assert report.verified, report
    newer = backup(lock_days=1)
    set_id = report.set.split("/")[1]
    backup_store = S3ObjectStore(roles["backup"], bucket, PREFIX)
    assert {s.set_id for s in list_backup_sets(backup_store, SERVER)} == {
        set_id,
        newer.set.split("/")[1],
    }
    manifest = load_manifest(backup_store, SERVER, set_id)
    assert manifest.encryption is not None and manifest.encryption.key_id == key_id
    assert manifest.object_lock is not None and manifest.object_lock.mode == "GOVERNANCE"
    with pytest.raises(ClientError, match="AccessDenied"):
        roles["backup"].delete_object(Bucket=bucket, Key=f"{PREFIX}/{report.set}/manifest.json")

    # --- verify --drill: passes with the key; a wrong key is one sentence, nothing restored --
    drilled = verify(report.set, drill=True)
    assert drilled.ok and drilled.drill_result.differences == [], drilled
    wrong = new_key()
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", wrong)
    with pytest.raises(EncryptionKeyMissing, match=f"key id {key_id}") as refused:
        verify(report.set, drill=True)
    assert len(str(refused.value).strip().splitlines()) == 1 and wrong not in str(refused.value)
    assert MasterKey.__name__ not in str(refused.value)
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", key)

    # --- prune, under the prune role: the older set is past the policy but locked ----------
    _as_role(monkeypatch, roles, iam_moto, "prune")
    plan = prune(server=SERVER, keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)
    rows = {f"{r.server}/{r.set_id}": r for r in plan.sets}
    assert rows[report.set].action == "keep", rows
    assert "locked (governance) until" in rows[report.set].reasons
    assert rows[report.set].prunable_after == manifest.object_lock.retain_until

    # --- the restore flow onto another database, with read-only credentials ----------------
    _as_role(monkeypatch, roles, iam_moto, "restore")
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    target = make_database("lp_restore")
    uri = f"postgresql://{pg_cluster.superuser}@127.0.0.1:{pg_cluster.port}/{target.database_name}"
    restored = restore(report.set, uri)
    assert restored.outcome == "succeeded", restored
    assert not restored.count_differences
    assert sql_table_counts(target) == sql_table_counts(running.database)
    assert sql_agents(target) == sql_agents(running.database)
    with pytest.raises(ClientError, match="AccessDenied"):
        roles["restore"].put_object(Bucket=bucket, Key=f"{PREFIX}/x", Body=b"x")
