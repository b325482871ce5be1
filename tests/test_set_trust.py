"""Only sets letta-ops wrote count: the attacks of issue #26 against a real S3 (moto).

An attacker holds the backup role's PutObject: it can write any key, with any store checksum,
and overwrite objects. It does not hold the repository key. Each test plants, re-points,
truncates or replays something and checks what the catalog, ``load_manifest``, verification
and retention make of it. The end-to-end version, by the real CLI with a real Letta server,
is in ``tests/test_encryption_e2e.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from letta_ops.flows.verify import resolve_set
from letta_ops.tasks.sets.admission import newest_rollback_set
from letta_ops.tasks.sets.authentication import canonical_form, open_repository
from letta_ops.tasks.sets.catalog import (
    UntrustedSet,
    check_manifest,
    list_backup_sets,
    load_manifest,
    record_pin,
    record_verification,
    write_manifest,
)
from letta_ops.tasks.sets.manifest import (
    MANIFEST_NAME,
    BackupManifest,
    ManifestObject,
    SetEncryption,
    set_prefix,
)
from letta_ops.tasks.sets.retention import (
    REASON_QUARANTINED,
    RetentionPolicy,
    execute_plan,
    plan_retention,
    safety_pin_until,
)
from letta_ops.tasks.sets.verification import check_objects
from letta_ops.tasks.store.encryption_keys import SCHEME, DecryptionFailed
from letta_ops.tasks.store.objects import ObjectChanged, ReadPin
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest

KEY = base64.b64encode(secrets.token_bytes(32)).decode()
SERVER = "prod"
REAL = "20261201T021500Z-real0001"
OLDER = "20261130T021500Z-old00001"


def _store(client, bucket, **keys) -> S3ObjectStore:
    """The bucket as letta-ops opens it: with the repository key(s) given (none: keyless)."""
    env = {"LETTA_OPS_ENCRYPTION_KEY": keys["encryption"]} if "encryption" in keys else {}
    if "signing" in keys:
        env["LETTA_OPS_SIGNING_KEY"] = keys["signing"]
    return open_repository(S3ObjectStore(client, bucket, "backups"), environ=env)


def _write_set(
    store, set_id: str, *, purpose: str = "pre-upgrade", server: str = SERVER, verified=True
) -> BackupManifest:
    """A set as the backup flow writes it: objects, then the authenticated manifest."""
    prefix = set_prefix(server, set_id)
    dump = store.put_bytes(prefix + "database.dump", b"PGDMP " + secrets.token_bytes(64))
    agent = store.put_bytes(prefix + "agents/agent-1.af", b'{"agents": []}')
    manifest = hand_made_manifest(
        set_id,
        server,
        dump.key,
        {o.key: ManifestObject.of(o) for o in (dump, agent)},
        purpose=purpose,
        row_counts={"agents": 1},
        encryption=SetEncryption(scheme=SCHEME, key_id=dump.key_id)
        if getattr(dump, "key_id", None)
        else None,
    )
    write_manifest(store, manifest)
    if verified:
        record_verification(store, prefix, {"ok": True})
    return manifest


def _raw(client, bucket, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=f"backups/{key}")["Body"].read()


def _plant(client, bucket, key: str, body: bytes) -> None:
    """What the attacker does: a plain PutObject with a valid SHA-256 store checksum."""
    client.put_object(Bucket=bucket, Key=f"backups/{key}", Body=body, ChecksumAlgorithm="SHA256")


def _copy_set(client, bucket, source: str, target: str, edit=lambda m: m) -> None:
    """Copy every object of a set under another id, re-pointing the manifest at the copy."""
    old, new = set_prefix(SERVER, source), set_prefix(SERVER, target)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"backups/{old}")["Contents"]
    for item in listed:
        key = item["Key"].removeprefix("backups/")
        body = _raw(client, bucket, key)
        if key.endswith(MANIFEST_NAME):
            document = json.loads(body.decode().replace(source, target))
            document["created_at"] = "2099-01-01T00:00:00Z"
            body = json.dumps(edit(document)).encode()
        _plant(client, bucket, key.replace(old, new), body)


@pytest.fixture
def bucket(s3_bucket):
    client, name, _ = s3_bucket
    return client, name


@pytest.mark.parametrize("keys", [{"encryption": KEY}, {"signing": KEY}])
def test_a_planted_set_is_untrusted_never_chosen_and_never_pruned(bucket, keys):
    client, name = bucket
    store = _store(client, name, **keys)
    _write_set(store, REAL)
    planted = "20990101T000000Z-planted1"
    _copy_set(client, name, REAL, planted)

    listed = {s.set_id: s for s in list_backup_sets(store, SERVER)}
    assert list(listed)[0] == planted  # newest by its (forged) date
    fake = listed[planted]
    assert (fake.trust, fake.status, fake.verified) == ("untrusted", "UNTRUSTED", False)
    assert "fails authentication" in fake.trust_reason
    assert listed[REAL].trust == "trusted" and listed[REAL].verified
    assert resolve_set(store, "latest", SERVER) == (SERVER, REAL)
    assert newest_rollback_set(store, SERVER).set_id == REAL
    with pytest.raises(UntrustedSet) as refused:
        load_manifest(store, SERVER, planted)
    [line] = str(refused.value).splitlines()
    assert planted in line and "fails authentication" in line

    # Retention: a policy that keeps one set keeps the real one and quarantines the plant.
    plan = plan_retention(list(listed.values()), RetentionPolicy(keep_last=1), datetime.now(UTC))
    kept = {d.set.set_id: d.reasons for d in plan.keep}
    assert kept[planted][0].startswith(REASON_QUARANTINED) and not plan.delete


def test_without_the_key_the_same_sets_are_keyless_and_read_as_they_are(bucket):
    """The control: a keyless store cannot tell (which is why S3 without a key is warned)."""
    client, name = bucket
    _write_set(_store(client, name, encryption=KEY), REAL)
    _copy_set(client, name, REAL, "20990101T000000Z-planted1")
    assert {s.trust for s in list_backup_sets(_store(client, name), SERVER)} == {"keyless"}


def test_a_manifest_overwritten_with_braces_is_quarantined_not_pruned(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, OLDER, purpose="scheduled")
    _write_set(store, REAL, purpose="scheduled")
    _plant(client, name, set_prefix(SERVER, OLDER) + MANIFEST_NAME, b"{}")
    sets = list_backup_sets(store, SERVER)
    damaged = next(s for s in sets if s.set_id == OLDER)
    assert (damaged.complete, damaged.trust) == (False, "untrusted")
    # Two days later, with a policy that keeps only the newest: the damaged set stays.
    plan = plan_retention(sets, RetentionPolicy(keep_last=1), datetime.now(UTC) + timedelta(2))
    assert not plan.delete
    assert execute_plan(store, plan) == []
    assert (
        client.list_objects_v2(Bucket=name, Prefix=f"backups/{set_prefix(SERVER, OLDER)}")[
            "KeyCount"
        ]
        >= 3
    )


def test_a_manifest_may_only_point_inside_its_own_set(bucket):
    """Re-pointing: the manifest of one set names another server's dump (a keyless store, so
    the MAC cannot be what catches it)."""
    client, name = bucket
    store = _store(client, name)
    other = _write_set(store, OLDER, server="staging")

    def repoint(document):
        document["dump"] = other.dump
        document["objects"][other.dump] = other.objects[other.dump].model_dump(mode="json")
        return document

    _write_set(store, REAL)
    _copy_set(client, name, REAL, "20990101T000000Z-planted1", edit=repoint)
    checked = check_manifest(store, SERVER, "20990101T000000Z-planted1")
    assert checked.trust == "untrusted" and "points outside its set" in checked.reason
    assert other.dump in checked.reason


def test_an_object_rewritten_after_the_set_was_written_is_never_read(bucket):
    client, name = bucket
    store = _store(client, name, signing=KEY)
    manifest = _write_set(store, REAL)
    loaded = load_manifest(store, SERVER, REAL)  # pins the reads to what was recorded
    assert store.read_bytes(manifest.dump).startswith(b"PGDMP")
    _plant(client, name, manifest.dump, b"PGDMP planted; COPY x FROM PROGRAM 'id';")
    with pytest.raises(ObjectChanged, match="no longer the one its backup set recorded"):
        store.read_bytes(manifest.dump)
    [problem] = check_objects(store, loaded, read_data=True)
    assert problem["object"] == manifest.dump and "rewritten" in problem["problem"]


def test_a_plaintext_object_in_an_encrypted_set_is_refused(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    manifest = _write_set(store, REAL)
    plain = b"PGDMP plaintext planted"
    _plant(client, name, manifest.dump, plain)
    fresh = _store(client, name, encryption=KEY)  # no pins: a store without ETag pins
    fresh.pin_reads({})
    load_manifest(fresh, SERVER, REAL)
    with pytest.raises((DecryptionFailed, ObjectChanged)):
        fresh.read_bytes(manifest.dump)
    # Without the ETag pin (a store that gives none), the plaintext check alone refuses it.
    fresh.inner._read_pins.clear()
    with pytest.raises(DecryptionFailed, match="stored in plaintext"):
        fresh.read_bytes(manifest.dump)


def test_the_newest_verification_decides_and_a_replayed_record_is_untrusted(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, OLDER)
    manifest = _write_set(store, REAL)
    prefix = set_prefix(SERVER, REAL)
    record_verification(store, prefix, {"ok": False, "problems": ["database.dump"]})
    real = next(s for s in list_backup_sets(store, SERVER) if s.set_id == REAL)
    assert (real.verification, real.verified, real.status) == ("failed", False, "FAILED")
    assert resolve_set(store, "latest", SERVER) == (SERVER, OLDER)
    assert newest_rollback_set(store, SERVER).set_id == OLDER

    # Replay: the old passing record copied under a newer name fails its MAC (its name is in
    # what the MAC covers), and makes the set untrusted rather than VERIFIED again.
    records = client.list_objects_v2(Bucket=name, Prefix=f"backups/{prefix}verifications/")
    oldest = sorted(o["Key"] for o in records["Contents"])[0].removeprefix("backups/")
    _plant(
        client,
        name,
        f"{prefix}verifications/99990101T000000000000Z.json",
        _raw(client, name, oldest),
    )
    replayed = next(s for s in list_backup_sets(store, SERVER) if s.set_id == REAL)
    assert replayed.trust == "untrusted" and "verifications/9999" in replayed.trust_reason
    assert manifest.set_id == REAL


def test_pins_end_and_unpin(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, OLDER, purpose="scheduled", verified=False)
    _write_set(store, REAL, purpose="scheduled")
    now = datetime.now(UTC)
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)

    record_pin(store, SERVER, OLDER, True, now + timedelta(days=3))
    [pinned] = [s for s in list_backup_sets(store, SERVER) if s.set_id == OLDER]
    assert pinned.pinned and pinned.pinned_until is not None
    plan = plan_retention(list_backup_sets(store, SERVER), policy, now)
    [reason] = [d.reasons for d in plan.keep if d.set.set_id == OLDER]
    assert reason == [f"pinned until {pinned.pinned_until.isoformat()}"]

    record_pin(store, SERVER, OLDER, False, None)  # unpin: the newest record decides
    plan = plan_retention(list_backup_sets(store, SERVER), policy, now)
    assert [d.set.set_id for d in plan.delete] == [OLDER]


def test_a_pin_past_its_date_no_longer_protects(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, OLDER, purpose="scheduled", verified=False)
    _write_set(store, REAL, purpose="scheduled")
    record_pin(store, SERVER, OLDER, True, datetime.now(UTC) + timedelta(seconds=1))
    import time

    time.sleep(1.2)
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)
    plan = plan_retention(list_backup_sets(store, SERVER), policy, datetime.now(UTC))
    assert [d.set.set_id for d in plan.delete] == [OLDER]


def test_safety_sets_are_pinned_for_the_configured_days():
    taken = datetime(2026, 12, 1, tzinfo=UTC)
    assert safety_pin_until("pre-upgrade", taken, {}) == taken + timedelta(days=30)
    assert safety_pin_until("pre-rollback", taken, {"LETTA_OPS_SAFETY_PIN_DAYS": "7"}) == (
        taken + timedelta(days=7)
    )
    assert safety_pin_until("pre-rename", taken, {"LETTA_OPS_SAFETY_PIN_DAYS": "0"}) is None
    assert safety_pin_until("scheduled", taken, {}) is None
    with pytest.raises(ValueError, match="LETTA_OPS_SAFETY_PIN_DAYS"):
        safety_pin_until("pre-upgrade", taken, {"LETTA_OPS_SAFETY_PIN_DAYS": "soon"})


def test_the_mac_binds_kind_and_location():
    body = {"set_id": REAL, "ok": True}
    forms = {
        canonical_form("manifest", f"{SERVER}/{REAL}/manifest.json", body),
        canonical_form("verification", f"{SERVER}/{REAL}/manifest.json", body),
        canonical_form("manifest", f"staging/{REAL}/manifest.json", body),
    }
    assert len(forms) == 3
    # The layout of the stored JSON does not matter, only its content.
    assert canonical_form("pin", "k", {"a": 1, "b": 2}) == canonical_form(
        "pin", "k", {"b": 2, "a": 1}
    )
    assert hashlib.sha256(canonical_form("pin", "k", {})).hexdigest()


def test_a_version_that_is_not_a_release_is_refused_in_the_manifest(bucket):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, REAL)
    document = json.loads(_raw(client, name, set_prefix(SERVER, REAL) + MANIFEST_NAME))
    document["letta_version"] = "0.16.2; rm -rf /"
    with pytest.raises(ValueError, match="not a release"):
        BackupManifest.model_validate(document)


# --------------------------------------------------------------------------- smaller holes


def test_a_catalog_document_larger_than_the_limit_is_not_read(bucket, monkeypatch):
    client, name = bucket
    store = _store(client, name, encryption=KEY)
    _write_set(store, REAL)
    monkeypatch.setattr("letta_ops.tasks.sets.catalog.MAX_DOCUMENT_BYTES", 64)
    [summary] = list_backup_sets(store, SERVER)
    assert summary.trust == "untrusted" and "not read" in summary.trust_reason


def test_a_decrypted_dump_is_readable_by_this_user_alone(bucket):
    from letta_ops.tasks.sets.verification import downloaded

    client, name = bucket
    store = _store(client, name, encryption=KEY)
    manifest = _write_set(store, REAL)
    load_manifest(store, SERVER, REAL)
    with downloaded(store, manifest.dump, manifest.objects[manifest.dump].sha256) as path:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_rollback_plan_shows_the_compose_file_it_puts_back(bucket, tmp_path):
    """The compose file comes back only from the authenticated set: the plan shows its diff
    against the file in place now."""
    from letta_ops.blocks.compose_runtime import DockerComposeRuntime
    from letta_ops.flows.rollback import runtime_file_changes

    client, name = bucket
    store = _store(client, name, encryption=KEY)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  letta_server:\n    image: letta/letta:0.16.2\n")
    runtime = DockerComposeRuntime(compose_file=compose, base_url="http://127.0.0.1:8283")
    manifest = _write_set(store, REAL)
    kept = store.put_bytes(
        set_prefix(SERVER, "20261202T021500Z-compose1") + "runtime/docker-compose.yml",
        b"services:\n  letta_server:\n    image: letta/letta:0.14.0\n",
    )
    with_file = manifest.model_copy(
        update={
            "set_id": "20261202T021500Z-compose1",
            "dump": manifest.dump.replace(REAL, "20261202T021500Z-compose1"),
            "objects": {
                kept.key: ManifestObject(size=kept.size, sha256=kept.sha256, etag=kept.etag)
            },
            "runtime_files": {"docker-compose.yml": kept.key},
        }
    )
    write_manifest(store, with_file)
    loaded = load_manifest(store, SERVER, "20261202T021500Z-compose1")
    diff = runtime_file_changes(runtime, store, loaded)["docker-compose.yml"]
    assert "-    image: letta/letta:0.16.2" in diff and "+    image: letta/letta:0.14.0" in diff
    compose.write_text("services:\n  letta_server:\n    image: letta/letta:0.14.0\n")
    assert runtime_file_changes(runtime, store, loaded) == {"docker-compose.yml": []}


def test_open_server_is_refused_when_a_password_is_configured():
    from pydantic import SecretStr

    from letta_ops.blocks.letta_runtime import RuntimeRefused
    from letta_ops.blocks.process_runtime import LettaProcessRuntime

    open_runtime = LettaProcessRuntime(server_name="s", open_server=True)
    assert open_runtime.password_to_require() is None  # open, and nothing to protect
    with pytest.raises(RuntimeRefused, match="a password is configured"):
        open_runtime.with_server_password(SecretStr("pw")).password_to_require()


def test_the_rebuild_scratch_server_always_runs_secured(monkeypatch, tmp_path):
    from letta_ops.blocks.server_profile import load_profile
    from letta_ops.flows.steps.scratch_export import secured_scratch

    monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:8283")
    monkeypatch.setenv("LETTA_OPS_OPEN_SERVER", "1")
    monkeypatch.delenv("LETTA_API_KEY", raising=False)
    runtime, server = secured_scratch(load_profile(), 9999, tmp_path)
    password = runtime.password_to_require()
    assert password and len(password) >= 24 and server.password.get_secret_value() == password
    assert server.base_url == "http://127.0.0.1:9999"
    monkeypatch.delenv("LETTA_OPS_OPEN_SERVER")
    monkeypatch.setenv("LETTA_API_KEY", "the-real-password")
    runtime, server = secured_scratch(load_profile(), 9999, tmp_path)
    assert runtime.password_to_require() == "the-real-password"


@pytest.mark.parametrize("version", ["0.16.2; id", "$(id)", "latest", "0.16", "../0.16.2"])
def test_only_a_release_reaches_an_operator_command(version):
    from letta_ops.blocks.command_runtime import command_argv

    assert command_argv(["deploy", "{version}"], "0.16.2") == ["deploy", "0.16.2"]
    with pytest.raises(ValueError, match="not a Letta release"):
        command_argv(["deploy", "{version}"], version)


@pytest.mark.parametrize("keys", [{"encryption": KEY}, {"signing": KEY}])
def test_a_locked_store_keeps_the_repository_key(bucket, keys):
    """--lock-days rebuilds the store that holds the bytes: its sets must still be signed."""
    from letta_ops.tasks.sets.catalog import repository_keys_of
    from letta_ops.tasks.store.locations import with_object_lock
    from letta_ops.tasks.store.object_lock import ObjectLock

    client, name = bucket
    store = _store(client, name, **keys)
    locked = with_object_lock(store, ObjectLock("GOVERNANCE", 1))
    assert repository_keys_of(locked) and repository_keys_of(locked) == repository_keys_of(store)


def test_a_set_signed_with_a_key_not_configured_asks_for_that_key(bucket):
    """Not a forgery but a missing key: one sentence naming the key id to supply."""
    from letta_ops.tasks.store.encryption_keys import EncryptionKeyMissing, parse_key

    client, name = bucket
    _write_set(_store(client, name, encryption=KEY), REAL)
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(EncryptionKeyMissing) as refused:
        load_manifest(_store(client, name, encryption=other), SERVER, REAL)
    [line] = str(refused.value).splitlines()
    assert parse_key(KEY, "k").key_id in line and "LETTA_OPS_ENCRYPTION_KEY" in line
    assert other not in line


def test_a_multipart_object_is_pinned_by_its_etag_alone_on_an_unversioned_bucket(bucket):
    """CompleteMultipartUpload answers VersionId "null" on an unversioned bucket; asking for
    that version later is a 400. The pin is the ETag alone there (found by the bench)."""
    import io

    client, name = bucket
    store = S3ObjectStore(client, name, "backups", part_size=5 * 1024 * 1024)
    stored = store.put_stream("prod/x/database.dump", io.BytesIO(b"x" * (11 * 1024 * 1024)))
    assert stored.etag and stored.etag.endswith('-3"') and stored.version_id is None
    store.pin_reads({stored.key: ReadPin(etag=stored.etag, version_id=stored.version_id)})
    assert store.metadata(stored.key).size == 11 * 1024 * 1024
    with store.open_read(stored.key, start=0, length=4) as head:
        assert head.read() == b"xxxx"
