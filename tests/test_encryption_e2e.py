"""Client-side encryption end to end: one real Letta 0.16.2 server, PostgreSQL 18, moto S3.

One server carries the story (a Letta start costs ~40 s on two cores): an encrypted backup,
verify and a restore drill with the key; verify without the key (stored bytes only) and
`backups list` without it; a drill with no key and with a wrong key refused in one sentence;
a key rotation; a rollback to the first set with the rotated key ring; a ciphertext altered
by one byte refused (by the checksums, and by the authentication when the manifest is forged
to match); and a scan of every stored object, the Prefect logs and artifacts and the audit
history for the encryption keys and the server password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import pytest

from letta_ops.cli.main import main
from letta_ops.flows.backup import backup
from letta_ops.flows.rollback import rollback
from letta_ops.flows.verify import verify
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.errors import EXIT_BAD_INPUT, EXIT_OK
from letta_ops.tasks.sets.catalog import load_manifest
from letta_ops.tasks.sets.manifest import MANIFEST_NAME, stays_plaintext
from letta_ops.tasks.store.encryption_keys import MAGIC, parse_key
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import http_agents, sql_table_counts
from tests.fixtures.prefect import flow_run_artifacts, flow_run_logs

pytestmark = pytest.mark.e2e

KEY = base64.b64encode(secrets.token_bytes(32)).decode()
ROTATED = base64.b64encode(secrets.token_bytes(32)).decode()
WRONG = base64.b64encode(secrets.token_bytes(32)).decode()
PASSWORD = "letta-pw-" + secrets.token_hex(8)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _agents(base_url: str, password: str) -> dict[str, str]:
    """Agent id -> name over HTTP with the password (a server letta-ops starts is secured)."""
    import httpx

    headers = {"Authorization": f"Bearer {password}"}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as http:
        page = http.get("/v1/agents/", params={"limit": 100}).raise_for_status().json()
    return {a["id"]: a["name"] for a in page}


def _objects(client, bucket) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _plant_copy(client, bucket, source: str, target: str) -> None:
    """The attack of issue #26 with only PutObject: every object of ``source`` copied under
    ``target``, the manifest and records re-pointed and re-dated, SHA-256 checksums sent."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"backups/{source}/")["Contents"]
    for item in listed:
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        name = item["Key"].removeprefix(f"backups/{source}/")
        if name == MANIFEST_NAME or name.startswith("verifications/"):
            document = json.loads(body.decode().replace(source.split("/")[1], target.split("/")[1]))
            document["created_at" if name == MANIFEST_NAME else "checked_at"] = (
                "2099-01-01T00:00:00Z"
            )
            body = json.dumps(document).encode()
        client.put_object(
            Bucket=bucket, Key=f"backups/{target}/{name}", Body=body, ChecksumAlgorithm="SHA256"
        )


def test_encrypted_backup_verify_drill_rotation_rollback_and_no_secret_anywhere(
    start_letta, s3_env, s3_bucket, monkeypatch, prefect_harness, audit_db, capsys
):
    started = time.monotonic()

    def phase(name: str) -> None:
        with capsys.disabled():
            print(f"\n[{time.monotonic() - started:6.1f} s] {name}")

    client, bucket, _ = s3_bucket
    running = start_letta(NEW_VERSION, "enc-e2e")
    with running.client() as letta:
        seed_agents(letta, 3, prefix="enc")
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LETTA_API_KEY", PASSWORD)
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", KEY)
    key_id = parse_key(KEY, "k").key_id
    plain_store = S3ObjectStore(client, bucket, "backups")
    before_agents = http_agents(running.server.base_url)
    before_counts = sql_table_counts(running.database)

    # --- an encrypted backup: every object but the catalog is ciphertext ------------------
    first = backup(purpose="manual")
    assert first.verified and first.encryption_key_id == key_id
    manifest = load_manifest(plain_store, *first.set.split("/"))  # no key needed
    assert manifest.encryption.key_id == key_id and manifest.row_counts == before_counts
    stored = _objects(client, bucket)
    content = {k: v for k, v in stored.items() if not stays_plaintext(k.split("/", 1)[1])}
    assert f"backups/{manifest.dump}" in content and len(content) == len(manifest.objects)
    for key, body in content.items():
        assert body.startswith(MAGIC), key
        assert b"PGDMP" not in body and not any(n.encode() in body for n in before_agents)
        expected = manifest.objects[key.split("/", 1)[1]]
        assert len(body) == expected.stored_size and expected.stored_size > expected.size
    phase("encrypted backup")

    # --- verify and a drill with the key -----------------------------------------------------
    drilled = verify(first.set, drill=True)
    assert drilled.ok and drilled.drill_result.differences == []
    assert drilled.encryption.model_dump() == {
        "scheme": "letta-ops/aes-256-gcm-stream@1",
        "key_id": key_id,
        "decrypted": True,
    }
    assert drilled.dump.tables_missing == [] and drilled.dump.toc_entries > 0

    # --- without the key: list and verify what is stored; a drill is refused --------------
    monkeypatch.delenv("LETTA_OPS_ENCRYPTION_KEY")
    code, out, _ = _cli(capsys, "backups", "list", "--json")
    assert code == EXIT_OK and json.loads(out)["sets"][0]["set"] == first.set
    assert json.loads(out)["sets"][0]["verified"] is True
    keyless = verify(first.set)
    assert keyless.ok and keyless.dump is None and not keyless.encryption.decrypted
    code, _, err = _cli(capsys, "verify", first.set, "--drill")
    assert code == EXIT_BAD_INPUT
    [line] = err.strip().splitlines()
    assert key_id in line and "no encryption key is configured" in line

    # --- a wrong key: one sentence naming the key the set needs, nothing restored ---------
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY", WRONG)
    code, _, err = _cli(capsys, "verify", first.set, "--drill")
    assert code == EXIT_BAD_INPUT
    [line] = err.strip().splitlines()
    assert key_id in line and "LETTA_OPS_ENCRYPTION_KEY" in line and WRONG not in line
    code, _, err = _cli(capsys, "rollback", "--to", first.set, "--yes")
    assert code == EXIT_BAD_INPUT and key_id in err
    assert http_agents(running.server.base_url) == before_agents
    phase("verify, drill, no key, wrong key")

    # --- rotation: new sets use the new key, old ones stay readable with the old listed ----
    key_file = running.runtime.state_dir.parent / "backup-keys"
    key_file.write_text(f"{ROTATED}\n{KEY}\n")
    key_file.chmod(0o600)
    monkeypatch.delenv("LETTA_OPS_ENCRYPTION_KEY")
    monkeypatch.setenv("LETTA_OPS_ENCRYPTION_KEY_FILE", str(key_file))
    with running.client() as letta:
        seed_agents(letta, 1, prefix="after")
    second = backup(purpose="manual")
    assert second.encryption_key_id == parse_key(ROTATED, "k").key_id != key_id

    # --- rollback to the first set (old key) with the rotated ring ---------------------------
    rolled = rollback(backup_set=first.set, lock_timeout_seconds=30)
    assert rolled.outcome == "succeeded", rolled
    assert _agents(running.server.base_url, PASSWORD) == before_agents
    assert sql_table_counts(running.database) == before_counts
    phase("rotation and rollback")

    # --- the planted set of issue #26: a copy of a real set, re-dated 2099, its manifest and
    # verification record edited, every object written with a valid SHA-256 store checksum --
    planted = f"{second.set.split('/')[0]}/20990101T000000Z-planted1"
    _plant_copy(client, bucket, second.set, planted)
    code, out, _ = _cli(capsys, "backups", "list", "--json")
    rows = {r["set"]: r for r in json.loads(out)["sets"]}
    assert code == EXIT_OK and next(iter(rows)) == planted  # listed first, by its date
    assert rows[planted]["status"] == "UNTRUSTED" and not rows[planted]["verified"]
    assert "fails authentication" in rows[planted]["trust_reason"]
    real_newest = next(r["set"] for r in rows.values() if r["status"] == "VERIFIED")
    code, out, _ = _cli(capsys, "verify", "latest", "--json")
    assert code == EXIT_OK and json.loads(out)["set"] == real_newest != planted
    code, out, _ = _cli(capsys, "rollback", "--to", "latest", "--dry-run", "--json")
    assert code == EXIT_OK and json.loads(out)["plan"]["set"] == real_newest
    code, out, _ = _cli(capsys, "verify", "latest", "--drill", "--json")
    assert code == EXIT_OK and json.loads(out)["set"] == real_newest
    assert json.loads(out)["drill_result"]["differences"] == []
    code, _, err = _cli(capsys, "rollback", "--to", planted, "--yes")
    assert code == EXIT_BAD_INPUT
    [line] = err.strip().splitlines()
    assert planted in line and "fails authentication" in line
    code, out, _ = _cli(capsys, "prune", "--execute", "--json")
    assert code == EXIT_OK and planted in json.loads(out)["quarantined"]
    assert planted not in json.loads(out)["deleted"]
    assert _agents(running.server.base_url, PASSWORD) == before_agents
    phase("planted set: untrusted, never chosen, refused, quarantined")

    # --- one byte of ciphertext altered: refused by checksums, and by authentication ------
    dump_key = f"backups/{second.set}/database.dump"
    body = bytearray(client.get_object(Bucket=bucket, Key=dump_key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=dump_key, Body=bytes(body))
    code, _, err = _cli(capsys, "verify", second.set)
    assert code != EXIT_OK and "database.dump" in err
    # Someone who can write the bucket forges the manifest to match: the tag still refuses.
    manifest_key = f"backups/{second.set}/{MANIFEST_NAME}"
    forged = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    entry = forged["objects"][f"{second.set}/database.dump"]
    entry.update(stored_sha256=hashlib.sha256(bytes(body)).hexdigest(), store_checksum=None)
    client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(forged).encode())
    code, _, err = _cli(capsys, "verify", second.set, "--drill")
    assert code == EXIT_BAD_INPUT
    [line] = err.strip().splitlines()
    assert "fails authentication" in line and MANIFEST_NAME in line

    # --- neither key nor the password anywhere: objects, logs, artifacts, history ----------
    secret_values = [KEY, ROTATED, WRONG, PASSWORD]
    needles = [s.encode() for s in secret_values] + [
        base64.b64decode(k) for k in (KEY, ROTATED, WRONG)
    ]
    for key, body in _objects(client, bucket).items():
        assert not any(n in body for n in needles), key
    # This test's own runs (and their sub-runs), every page of their logs and artifacts.
    records = AuditStore.from_env().query()
    assert {"backup", "verify", "drill", "rollback"} <= {r.operation for r in records}
    runs = {r.flow_run_id for r in records if r.flow_run_id}
    logs, artifacts = flow_run_logs(runs), flow_run_artifacts(runs)
    dumped = json.dumps(logs + [a.model_dump(mode="json") for a in artifacts]).encode()
    assert len(logs) > 20 and artifacts
    assert any("rollback" in message.lower() for message in logs)  # the runs' own lines
    assert not any(n in dumped for n in needles)
    assert not any(n in audit_db.read_bytes() for n in needles)
    assert not any(
        n in json.dumps([r.to_json().decode() for r in records]).encode() for n in needles
    )
    phase("tamper refused, secrets scanned")
