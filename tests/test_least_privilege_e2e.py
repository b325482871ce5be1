"""The backup and restore *flows* under the README's IAM roles, on a real Letta server.

``tests/test_least_privilege.py`` proves each role's store operations one by one; this runs the
real ``backup`` flow (exports, pg_dump, manifest, verification) with the *backup* role's
credentials only, and the real ``restore`` flow onto another database with the *restore*
role's only, against moto's IAM evaluation (its own ``moto_server`` on 127.0.0.1, stopped by
its pid). Counts are the tests' own SQL.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from letta_ops.flows.backup import backup
from letta_ops.flows.restore import restore
from letta_ops.tasks.backup_catalog import list_backup_sets
from letta_ops.tasks.object_store import S3ObjectStore
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


def test_backup_flow_under_the_backup_role_restore_flow_under_the_restore_role(
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

    # --- the backup flow, with credentials that may only put new objects and read -----------
    _as_role(monkeypatch, roles, iam_moto, "backup")
    report = backup(lock_days=1)
    assert report["verified"], report
    set_id = report["set"].split("/")[1]
    backup_store = S3ObjectStore(roles["backup"], bucket, PREFIX)
    assert [s.set_id for s in list_backup_sets(backup_store, SERVER)] == [set_id]
    with pytest.raises(ClientError, match="AccessDenied"):
        roles["backup"].delete_object(Bucket=bucket, Key=f"{PREFIX}/{report['set']}/manifest.json")

    # --- the restore flow onto another database, with read-only credentials ----------------
    _as_role(monkeypatch, roles, iam_moto, "restore")
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    target = make_database("lp_restore")
    uri = f"postgresql://{pg_cluster.superuser}@127.0.0.1:{pg_cluster.port}/{target.database_name}"
    restored = restore(report["set"], uri)
    assert restored["outcome"] == "succeeded", restored
    assert not restored["count_differences"]
    assert sql_table_counts(target) == sql_table_counts(running.database)
    assert sql_agents(target) == sql_agents(running.database)
    with pytest.raises(ClientError, match="AccessDenied"):
        roles["restore"].put_object(Bucket=bucket, Key=f"{PREFIX}/x", Body=b"x")
