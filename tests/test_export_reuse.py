"""Which previous set a backup reuses agent files from, and when a reuse falls back to an
export: sets written as the backup flow writes them into a real S3 (moto) with a repository
key, and the attacks of issue #26 (a planted or forged set, a rewritten file) against the reuse.

The Letta API is the one stand-in: :class:`Exports` records which agents were exported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets

import pytest

from letta_ops.tasks.sets.agent_export import export_agents
from letta_ops.tasks.sets.authentication import open_repository
from letta_ops.tasks.sets.catalog import (
    list_backup_sets,
    load_manifest,
    record_verification,
    sets_newest_first,
    write_manifest,
)
from letta_ops.tasks.sets.export_reuse import (
    FULL_EXPORTS_ENV,
    ReusePlan,
    full_exports_chosen,
    parent_set,
)
from letta_ops.tasks.sets.manifest import (
    MANIFEST_NAME,
    AgentEntry,
    BackupManifest,
    ManifestObject,
    agent_file_key,
    set_prefix,
)
from letta_ops.tasks.store.locations import open_store
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest

KEY = base64.b64encode(secrets.token_bytes(32)).decode()
SERVER = "prod"
REVISION = "27de0f58e076"
AGENTS = [{"id": f"agent-{i}", "name": f"Agent {i}"} for i in range(3)]
FINGERPRINTS = {a["id"]: hashlib.sha256(a["id"].encode()).hexdigest() for a in AGENTS}


class Exports:
    """Letta's export endpoint, as far as a backup uses it: a file per agent, counted."""

    def __init__(self) -> None:
        self.exported: list[str] = []

    def export_agent(self, agent_id: str) -> bytes:
        self.exported.append(agent_id)
        return json.dumps({"agents": [{"id": agent_id}], "fresh": True}).encode()


def _repository(client, bucket, key: str | None = KEY) -> S3ObjectStore:
    env = {"LETTA_OPS_ENCRYPTION_KEY": key} if key else {}
    return open_repository(S3ObjectStore(client, bucket, "backups"), environ=env)


def _write_set(
    store,
    set_id: str,
    *,
    version: str = "0.16.2",
    revision: str = REVISION,
    verified: bool | None = True,
    fingerprints: dict[str, str] = FINGERPRINTS,
) -> BackupManifest:
    """A set as the backup flow writes it: agent files, dump, authenticated manifest, and its
    verification record (``verified=None``: none)."""
    prefix = set_prefix(SERVER, set_id)
    dump = store.put_bytes(prefix + "database.dump", b"PGDMP " + secrets.token_bytes(64))
    files = {
        a["id"]: store.put_bytes(agent_file_key(prefix, a["id"]), f"file of {a['id']}".encode())
        for a in AGENTS
    }
    manifest = hand_made_manifest(
        set_id,
        SERVER,
        dump.key,
        {o.key: ManifestObject.of(o) for o in (dump, *files.values())},
        letta_version=version,
        alembic_revision=revision,
        postgres_version=None,
        row_counts={"agents": len(AGENTS)},
        agents=[
            AgentEntry(**a, file=files[a["id"]].key, fingerprint=fingerprints.get(a["id"]))
            for a in AGENTS
        ],
    )
    write_manifest(store, manifest)
    if verified is not None:
        record_verification(store, prefix, {"ok": verified})
    return manifest


def _plant(client, bucket, key: str, body: bytes) -> None:
    client.put_object(Bucket=bucket, Key=f"backups/{key}", Body=body, ChecksumAlgorithm="SHA256")


def _backup(store, plan: ReusePlan, set_id: str = "20261203T021500Z-new00001"):
    exports, warnings = Exports(), []
    entries, stored = export_agents(
        exports,  # type: ignore[arg-type]
        AGENTS,
        store,
        set_prefix(SERVER, set_id),
        1,
        plan=plan,
        on_warning=warnings.append,
    )
    return entries, stored, exports.exported, warnings


def test_the_newest_verified_set_of_the_same_version_and_revision_is_the_parent(s3_bucket):
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    _write_set(store, "20261201T021500Z-good0001")
    wanted = _write_set(store, "20261202T021500Z-good0002")
    _write_set(store, "20261202T031500Z-othrrev1", revision="b1c2d3e4f5a6")
    _write_set(store, "20261202T041500Z-othrver1", version="0.16.8")
    _write_set(store, "20261202T051500Z-failed01", verified=False)
    _write_set(store, "20261202T061500Z-unverif1", verified=None)
    parent = parent_set(_repository(client, bucket), SERVER, "0.16.2", REVISION)
    assert parent is not None and parent.set_id == wanted.set_id
    # Read lazily, newest first: the catalog's own order for every set it believes.
    assert [s.set_id for s in sets_newest_first(store, SERVER)] == [
        s.set_id for s in list_backup_sets(store, SERVER)
    ]
    assert parent_set(store, SERVER, "0.16.2", "1c28e167b74f") is None
    assert parent_set(store, "another", "0.16.2", REVISION) is None


def test_a_planted_newer_set_with_a_forged_manifest_is_never_the_parent(s3_bucket):
    """The attacker copies the real set under a newer id, points the copy's fingerprints at
    its own agent files and forges the verification: the catalog does not believe it, and the
    reuse takes the real set."""
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    real = _write_set(store, "20261201T021500Z-real0001")
    forged_id = "20261205T021500Z-forged01"
    prefix = set_prefix(SERVER, forged_id)
    document = json.loads(real.to_json().decode().replace(real.set_id, forged_id))
    for key in document["objects"]:
        if "/agents/" in key:
            body = b"planted agent file"
            _plant(client, bucket, key, body)
            document["objects"][key].update(
                sha256=hashlib.sha256(body).hexdigest(),
                size=len(body),
                etag=None,
                stored_sha256=None,
                stored_size=None,
            )
    _plant(client, bucket, prefix + MANIFEST_NAME, json.dumps(document).encode())
    _plant(client, bucket, prefix + "verifications/20990101T000000Z.json", b'{"ok": true}')

    summaries = {s.set_id: s for s in list_backup_sets(store, SERVER)}
    assert summaries[forged_id].quarantined
    parent = parent_set(store, SERVER, "0.16.2", REVISION)
    assert parent is not None and parent.set_id == real.set_id

    entries, _stored, exported, warnings = _backup(store, ReusePlan(FINGERPRINTS, parent))
    assert exported == [] and warnings == []
    assert all(e.reused_from == real.set_id for e in entries)
    for entry in entries:
        assert store.read_bytes(entry.file) == f"file of {entry.id}".encode()


def test_a_replayed_older_set_is_never_the_parent(s3_bucket):
    """Every object of an older genuine set copied byte for byte under a newer id (its
    authenticated manifest included): the manifest names its own set, so the copy is not
    believed, and the parent is the newest real set."""
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    old = _write_set(store, "20261201T021500Z-old00001", fingerprints={})
    newest = _write_set(store, "20261202T021500Z-real0001")
    replayed = "20261206T021500Z-replay01"
    old_prefix = set_prefix(SERVER, old.set_id)
    for listed in client.list_objects_v2(Bucket=bucket, Prefix=f"backups/{old_prefix}")["Contents"]:
        body = client.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
        _plant(client, bucket, listed["Key"].removeprefix("backups/").replace(
            old.set_id, replayed), body)  # fmt: skip
    assert not {s.set_id: s for s in list_backup_sets(store, SERVER)}[replayed].believed
    parent = parent_set(store, SERVER, "0.16.2", REVISION)
    assert parent is not None and parent.set_id == newest.set_id


def test_a_truncated_file_is_exported_again(s3_bucket):
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    _write_set(store, "20261201T021500Z-real0001")
    parent = parent_set(store, SERVER, "0.16.2", REVISION)
    assert parent is not None
    key = f"backups/{parent.agents[2].file}"
    whole = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    _plant(client, bucket, parent.agents[2].file, whole[: len(whole) // 2])
    entries, _stored, exported, warnings = _backup(store, ReusePlan(FINGERPRINTS, parent))
    assert exported == ["agent-2"] and len(warnings) == 1
    assert [e.reused_from for e in entries] == [parent.set_id, parent.set_id, None]


def test_only_forged_sets_in_the_bucket_means_no_parent(s3_bucket):
    """Without the key nobody writes a set the catalog believes: a keyed repository whose only
    set is planted (unauthenticated, or sealed with another key) has no parent."""
    client, bucket, _ = s3_bucket
    other_key = base64.b64encode(secrets.token_bytes(32)).decode()
    _write_set(_repository(client, bucket, other_key), "20261201T021500Z-other001")
    _write_set(_repository(client, bucket, None), "20261202T021500Z-nokey001")  # no MAC at all
    store = _repository(client, bucket)
    assert {s.trust for s in list_backup_sets(store, SERVER)} == {"untrusted", "legacy"}
    assert parent_set(store, SERVER, "0.16.2", REVISION) is None


def test_unchanged_agents_are_copied_changed_ones_exported(s3_bucket):
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    parent = _write_set(
        store, "20261201T021500Z-real0001", fingerprints={"agent-0": FINGERPRINTS["agent-0"]}
    )
    now = {**FINGERPRINTS, "agent-1": "0" * 64}  # agent-1 changed; agent-2 had no fingerprint
    entries, stored, exported, warnings = _backup(store, ReusePlan(now, parent))
    assert exported == ["agent-1", "agent-2"] and warnings == []
    assert [e.reused_from for e in entries] == [parent.set_id, None, None]
    assert [e.fingerprint for e in entries] == [now[a["id"]] for a in AGENTS]
    reused = stored[0]
    assert reused.key == agent_file_key(set_prefix(SERVER, "20261203T021500Z-new00001"), "agent-0")
    assert reused.sha256 == parent.objects[parent.agents[0].file].sha256
    assert getattr(reused, "key_id", None) is not None  # encrypted again, under its own name

    # Nothing to compare with: --full-exports (no parent) exports all, fingerprints recorded.
    entries, _stored, exported, _warnings = _backup(
        store, ReusePlan(now), "20261204T021500Z-full0001"
    )
    assert exported == [a["id"] for a in AGENTS]
    assert all(e.fingerprint and e.reused_from is None for e in entries)


def test_a_file_rewritten_in_the_bucket_is_exported_again(s3_bucket):
    """The parent's file replaced after its set was written: the read pinned to the recorded
    ETag refuses it, the agent is exported, one warning says so."""
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    _write_set(store, "20261201T021500Z-real0001")
    parent = parent_set(store, SERVER, "0.16.2", REVISION)
    assert parent is not None
    _plant(client, bucket, parent.agents[1].file, b"planted")
    entries, _stored, exported, warnings = _backup(store, ReusePlan(FINGERPRINTS, parent))
    assert exported == ["agent-1"]
    assert [e.reused_from is None for e in entries] == [False, True, False]
    [warning] = warnings
    assert "agent-1" in warning and "exporting it again" in warning


def test_a_file_whose_bytes_differ_from_the_manifest_is_exported_again(tmp_path):
    """A store without ETags (a directory): the bytes read are held to the manifest's sha256."""
    store = open_store(f"file://{tmp_path}")
    parent = _write_set(store, "20261201T021500Z-real0001")
    (tmp_path / parent.agents[2].file).write_bytes(b"file of agent-X")  # same size, other bytes
    entries, _stored, exported, warnings = _backup(store, ReusePlan(FINGERPRINTS, parent))
    assert exported == ["agent-2"] and entries[2].reused_from is None
    assert "does not match the sha256" in warnings[0]
    assert json.loads(store.read_bytes(entries[2].file))["fresh"] is True


def test_sets_written_before_fingerprints_still_load_and_are_never_reused_from(s3_bucket):
    """A manifest sealed without the new fields authenticates as it did; no fingerprint, no
    reuse."""
    client, bucket, _ = s3_bucket
    store = _repository(client, bucket)
    manifest = _write_set(store, "20261201T021500Z-old00001", fingerprints={})
    key = set_prefix(SERVER, manifest.set_id) + MANIFEST_NAME
    body = manifest.model_dump(mode="json")
    for agent in body["agents"]:
        del agent["fingerprint"], agent["reused_from"]
    store.delete(key)
    from letta_ops.tasks.sets.catalog import _write_document

    _write_document(store, key, "manifest", body)
    loaded = load_manifest(store, SERVER, manifest.set_id)
    assert [a.fingerprint for a in loaded.agents] == [None] * len(AGENTS)
    assert ReusePlan(FINGERPRINTS, loaded).reusable("agent-0") is None


@pytest.mark.parametrize(
    ("flag", "env", "full"),
    [(None, "", False), (None, "1", True), (None, "true", True), (False, "1", False)],
)
def test_full_exports_from_the_flag_else_the_environment(flag, env, full):
    assert full_exports_chosen(flag, {FULL_EXPORTS_ENV: env}) is full


def test_a_database_that_cannot_be_fingerprinted_costs_the_reuse_not_the_backup(tmp_path):
    from letta_ops.blocks.letta_database import LettaDatabase
    from letta_ops.flows.steps.agent_reuse import reuse_plan

    store = open_store(f"file://{tmp_path}")
    _write_set(store, "20261201T021500Z-real0001")
    unreachable = LettaDatabase(uri="postgresql://letta:letta@127.0.0.1:9/letta")
    warnings: list[str] = []
    plan = reuse_plan(unreachable, store, SERVER, "0.16.2", REVISION, False, warnings.append)
    assert plan == ReusePlan()
    [warning] = warnings
    assert "could not be taken" in warning and "every agent is exported" in warning
