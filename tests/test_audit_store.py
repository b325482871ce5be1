"""The audit store (SQLite through its migrations), its JSON copies and redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from letta_ops.tasks.audit.migrations import VERSION_TABLE, current_revision, head_revision
from letta_ops.tasks.audit.redaction import redact_text, redact_value, secrets_from_environment
from letta_ops.tasks.audit.store import (
    AuditRecord,
    AuditStore,
    preserve_set_records,
    rebuild_from_object_store,
    record_key,
    write_record_object,
)
from letta_ops.tasks.sets.manifest import MANIFEST_NAME
from letta_ops.tasks.store.local import LocalObjectStore
from letta_ops.tasks.store.objects import ObjectExistsError

T0 = datetime(2026, 11, 20, 2, 15, tzinfo=UTC)


def _record(n: int, **fields) -> AuditRecord:
    base = {
        "record_id": f"0000000{n}-aaaa-bbbb-cccc-dddddddddddd",
        "operation": "backup",
        "server": "prod",
        "outcome": "succeeded",
        "started_at": T0 + timedelta(hours=n),
        "ended_at": T0 + timedelta(hours=n, minutes=3),
    }
    return AuditRecord(**{**base, **fields})


def test_migrations_build_the_schema_once(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'nested' / 'audit.db'}")
    engine = store.engine  # opening migrates
    assert current_revision(engine) == head_revision() != ""
    tables = set(sa.inspect(engine).get_table_names())
    assert {"audit_runs", VERSION_TABLE} <= tables
    store.close()
    again = AuditStore(store.url)
    assert again.query() == []  # a second open is a no-op migration
    assert current_revision(again.engine) == head_revision()


def test_save_query_and_find(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    store.save(_record(1))
    store.save(_record(2, operation="upgrade", outcome="failed", versions_from="0.11.7"))
    store.save(_record(3, server="staging", flow_run_name="backup-staging"))
    store.save(_record(1, outcome="failed"))  # same run: replaced, not duplicated

    everything = store.query()
    assert [r.record_id[:8] for r in everything] == ["00000003", "00000002", "00000001"]
    assert everything[2].outcome == "failed"
    assert everything[0].started_at.tzinfo is not None
    assert [r.operation for r in store.query(server="prod")] == ["upgrade", "backup"]
    assert [r.server for r in store.query(outcome="failed", operation="upgrade")] == ["prod"]
    since = store.query(since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=2, minutes=1))
    assert [r.versions_from for r in since] == ["0.11.7"]
    assert len(store.query(limit=2)) == 2
    assert [r.server for r in store.find("backup-staging")] == ["staging"]
    assert len(store.find("0000000")) == 3 and len(store.find("00000002")) == 1
    assert store.find("nope") == []


def test_json_beside_a_complete_set_else_under_audit(tmp_path):
    objects = LocalObjectStore(tmp_path / "store")
    set_id = "20261120T021500Z-abcd1234"
    beside = _record(1, backup_set=f"prod/{set_id}")
    assert record_key(beside, set_complete=True) == f"prod/{set_id}/audit/{beside.record_id}.json"

    # The set has no manifest yet: the record must not live (and die) inside it.
    key = write_record_object(objects, beside)
    assert key.startswith("audit/prod--20261120T031500Z--") and key.count("/") == 1

    objects.put_bytes(f"prod/{set_id}/{MANIFEST_NAME}", b"{}")
    second = _record(2, backup_set=f"prod/{set_id}")
    assert write_record_object(objects, second) == f"prod/{set_id}/audit/{second.record_id}.json"
    with pytest.raises(ObjectExistsError):  # write-once
        write_record_object(objects, second)
    assert json.loads(objects.read_bytes(key))["record_id"] == beside.record_id


def test_rebuild_and_preserve_before_prune(tmp_path):
    objects = LocalObjectStore(tmp_path / "store")
    set_id = "20261120T021500Z-abcd1234"
    objects.put_bytes(f"prod/{set_id}/{MANIFEST_NAME}", b"{}")
    records = [
        _record(1, backup_set=f"prod/{set_id}"),
        _record(2, operation="prune", server="all"),
        _record(3, operation="upgrade", outcome="failed", rollback_outcome="succeeded"),
    ]
    for record in records:
        write_record_object(objects, record)
    objects.put_bytes("audit/garbage.json", b"not json")

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    result = rebuild_from_object_store(store, objects)
    assert result["loaded"] == 3 and [p["key"] for p in result["problems"]] == [
        "audit/garbage.json"
    ]
    rows = {r.record_id: r for r in store.query()}
    assert {k: v.model_dump(exclude={"object_key"}) for k, v in rows.items()} == {
        r.record_id: r.model_dump(exclude={"object_key"}) for r in records
    }

    # Retention is about to delete the set: its records move to audit/ first.
    copied = preserve_set_records(objects, [f"prod/{set_id}/"])
    assert len(copied) == 1 and copied[0].startswith("audit/prod--")
    assert preserve_set_records(objects, [f"prod/{set_id}/"]) == []  # write-once, idempotent
    objects.delete_prefix(f"prod/{set_id}/")
    (tmp_path / "audit.db").unlink()
    store = AuditStore(store.url)
    assert rebuild_from_object_store(store, objects)["loaded"] == 3


def test_redaction_drops_keys_cuts_uris_and_known_values():
    env = {
        "LETTA_PG_URI": "postgresql://letta:S3cret-Pw%21@127.0.0.1:5432/letta",
        "LETTA_API_KEY": "sk-letta-0123456789",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "PWD": "/work/main",
        "HOME": "/root",
    }
    secrets = secrets_from_environment(env)
    assert secrets == {"S3cret-Pw%21", "S3cret-Pw!", "sk-letta-0123456789"}
    value = {
        "store": "s3://bucket/prefix",
        "password": "x",
        "db": {"uri": env["LETTA_PG_URI"], "api_key": "y", "note": "key sk-letta-0123456789"},
        "list": ["token=abc&x=1", "Authorization: Bearer abc.def", "S3cret-Pw! leaked"],
    }
    clean = redact_value(value, secrets)
    text = json.dumps(clean)
    for secret in ("S3cret", "sk-letta", "abc", '"x"', '"y"'):
        assert secret not in text
    assert clean["store"] == "s3://bucket/prefix"
    assert "password" not in clean and "api_key" not in clean["db"]
    assert redact_text("postgresql+pg8000://u:p4ss@h/d") == "postgresql+pg8000://u@h/d"
    assert redact_text("passed 3 of 3, pwd is fine") == "passed 3 of 3, pwd is fine"


def test_a_team_store_on_postgresql(make_database):
    """LETTA_OPS_AUDIT_URL may name a PostgreSQL database: same migrations, same queries."""
    database = make_database("audit")
    store = AuditStore(database.letta_pg_uri())
    assert store.describe().count("***") == 1  # the password is never shown
    store.save(_record(1, counts_before={"agents": 2, "tables": {"agents": 2}}))
    store.save(
        _record(
            2,
            parent_flow_run_id="00000001-aaaa-bbbb-cccc-dddddddddddd",
            rollback_outcome="failed: " + "x" * 400,  # longer than its column: cut, not lost
        )
    )
    assert current_revision(store.engine) == head_revision()
    [top] = store.query(top_level_only=True)
    assert top.counts_before == {"agents": 2, "tables": {"agents": 2}}
    [child] = store.query(parent=top.record_id)
    assert child.record_id.startswith("00000002") and len(child.rollback_outcome) == 200
    store.close()
