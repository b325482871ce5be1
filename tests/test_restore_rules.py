"""The rules that decide, before anything stops, what a rollback or restore may do.

Real objects in a real (local) write-once store; no server is needed for any of these.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from letta_ops.blocks.letta_database import target_database
from letta_ops.cli.main import main
from letta_ops.tasks.errors import EXIT_BAD_INPUT
from letta_ops.tasks.letta.agent_file import AgentFileError, rename_agent_file, summarize_agent_file
from letta_ops.tasks.letta.agent_names import ASCII, UNICODE
from letta_ops.tasks.postgres.restore_target import (
    RestoreTargetRefused,
    same_database,
)
from letta_ops.tasks.sets.admission import (
    BackupSetRefused,
    newest_rollback_set,
    require_intact,
    require_same_server,
)
from letta_ops.tasks.sets.agent_restore import AgentRestoreRefused, copy_name, plan_agent_restore
from letta_ops.tasks.sets.catalog import BackupSetError, load_manifest, record_verification
from letta_ops.tasks.sets.manifest import (
    MANIFEST_NAME,
    AgentEntry,
    BackupManifest,
    ManifestObject,
    agent_file_key,
    set_prefix,
)
from letta_ops.tasks.store.local import LocalObjectStore
from tests.fixtures.hand_made_manifest import hand_made_manifest


def agent_file(name: str, blocks: dict[str, str], messages: int) -> bytes:
    """A multi-entity agent file as Letta 0.11.7+ exports it (the parts letta-ops reads)."""
    block_list = [
        {"id": f"block-{i}", "label": label, "value": value}
        for i, (label, value) in enumerate(blocks.items())
    ]
    return json.dumps(
        {
            "agents": [
                {
                    "id": "agent-0",
                    "name": name,
                    "block_ids": [b["id"] for b in block_list],
                    "messages": [{"id": f"message-{i}"} for i in range(messages)],
                }
            ],
            "blocks": block_list,
            "tools": [],
            "sources": [],
            "files": [],
            "groups": [],
            "mcp_servers": [],
            "metadata": {"revision_id": "x"},
        }
    ).encode()


def write_set(
    store: LocalObjectStore,
    server: str,
    set_id: str,
    agents: list[tuple[str, str]],
    purpose: str = "pre-upgrade",
    manifest_server: str | None = None,
    verified: bool = True,
) -> BackupManifest:
    prefix = set_prefix(server, set_id)
    objects, entries = {}, []
    for agent_id, name in agents:
        stored = store.put_bytes(
            agent_file_key(prefix, agent_id), agent_file(name, {"persona": "p"}, 3)
        )
        objects[stored.key] = ManifestObject(size=stored.size, sha256=stored.sha256)
        entries.append(AgentEntry(id=agent_id, name=name, file=stored.key))
    dump = store.put_bytes(prefix + "database.dump", b"PGDMP fake dump")
    objects[dump.key] = ManifestObject(size=dump.size, sha256=dump.sha256)
    now = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    manifest = hand_made_manifest(
        set_id,
        manifest_server or server,
        dump.key,
        objects,
        created_at=now,
        purpose=purpose,
        letta_version="0.11.7",
        alembic_revision="ddb69be34a72",
        row_counts={"agents": len(agents)},
        agents=entries,
    )
    store.put_bytes(prefix + MANIFEST_NAME, manifest.to_json())
    if verified:
        record_verification(store, prefix, {"ok": True})
    return manifest


SET_A = "20261123T021500Z-aaaa1111"
SET_B = "20261124T021500Z-bbbb2222"


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "repo")


# --------------------------------------------------------------------------- sets


def test_newest_verified_pre_upgrade_set_is_the_default(store):
    write_set(store, "prod", SET_A, [("agent-1", "a")])
    write_set(store, "prod", SET_B, [("agent-1", "a")], purpose="scheduled")
    assert newest_rollback_set(store, "prod").set_id == SET_A
    with pytest.raises(BackupSetRefused, match="no verified pre-upgrade backup set"):
        newest_rollback_set(store, "staging")


def test_set_without_manifest_is_refused(store):
    store.put_bytes(set_prefix("prod", SET_A) + "database.dump", b"half a set")
    with pytest.raises(BackupSetError, match="has no manifest"):
        load_manifest(store, "prod", SET_A)


def test_tampered_object_is_refused_with_its_name(store, tmp_path):
    manifest = write_set(store, "prod", SET_A, [("agent-1", "a")])
    path = tmp_path / "repo" / "prod" / SET_A / "database.dump"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BackupSetRefused) as refused:
        require_intact(store, manifest)
    message = str(refused.value)
    assert "database.dump: sha256 differs" in message and "tampered" in message
    assert len(message.splitlines()) == 1
    # Only the agent files an agent restore uses are re-read; they are intact.
    assert require_intact(store, manifest, [manifest.agents[0].file]) == 1


def test_set_of_another_server_is_refused(store):
    manifest = write_set(store, "staging", SET_A, [("agent-1", "a")])
    with pytest.raises(BackupSetRefused, match="taken of server 'staging', not 'prod'"):
        require_same_server(manifest, "prod")
    # A manifest copied under another server's prefix is refused on load.
    write_set(store, "prod", SET_B, [("agent-1", "a")], manifest_server="staging")
    with pytest.raises(BackupSetError, match="copied from another set"):
        load_manifest(store, "prod", SET_B)


# --------------------------------------------------------------------------- agent restore


def test_agents_are_chosen_by_id_or_unique_name(store):
    manifest = write_set(
        store, "prod", SET_A, [("agent-1", "Helper"), ("agent-2", "Twin"), ("agent-3", "Twin")]
    )
    steps = plan_agent_restore(manifest, ["agent-1", "Helper", "agent-3"], [], UNICODE)
    assert [(s.agent_id, s.restore_as) for s in steps] == [
        ("agent-1", "Helper"),
        ("agent-3", "Twin"),
    ]
    with pytest.raises(AgentRestoreRefused, match="2 agents .* are called 'Twin'"):
        plan_agent_restore(manifest, ["Twin"], [], UNICODE)
    with pytest.raises(AgentRestoreRefused, match="no agent with id or name 'Ghost'"):
        plan_agent_restore(manifest, ["Ghost"], [], UNICODE)


def test_live_agent_needs_as_copy(store):
    manifest = write_set(store, "prod", SET_A, [("agent-1", "Helper")])
    live = [{"id": "agent-1", "name": "Helper"}]
    with pytest.raises(AgentRestoreRefused, match="still live.*--as-copy"):
        plan_agent_restore(manifest, ["Helper"], live, UNICODE)
    with pytest.raises(AgentRestoreRefused, match="already called 'Helper'"):
        plan_agent_restore(manifest, ["Helper"], [{"id": "agent-9", "name": "Helper"}], UNICODE)
    [step] = plan_agent_restore(manifest, ["Helper"], live, UNICODE, as_copy=True)
    assert step.restore_as == "Helper restored 2026-11-23" and step.renamed
    taken = live + [{"id": "agent-8", "name": "Helper restored 2026-11-23"}]
    [again] = plan_agent_restore(manifest, ["Helper"], taken, UNICODE, as_copy=True)
    assert again.restore_as == "Helper restored 2026-11-23-2"


def test_names_follow_the_running_versions_rule(store):
    manifest = write_set(store, "prod", SET_A, [("agent-1", "Café Ñandú"), ("agent-2", "AI/ML")])
    steps = plan_agent_restore(manifest, ["agent-1", "agent-2"], [], ASCII)
    assert [s.restore_as for s in steps] == ["Cafe Nandu", "AI-ML"]
    steps = plan_agent_restore(manifest, ["agent-1"], [], UNICODE)
    assert steps[0].restore_as == "Café Ñandú" and not steps[0].renamed
    assert ASCII.accepts(copy_name("AI/ML Expert", "2026-11-23", ASCII))


def test_failed_export_cannot_be_restored_from_files(store):
    manifest = write_set(store, "prod", SET_A, [("agent-1", "a")])
    manifest.agents.append(AgentEntry(id="agent-2", name="AI/ML Expert", error="500"))
    with pytest.raises(AgentRestoreRefused, match="could not be exported.*pg_dump"):
        plan_agent_restore(manifest, ["agent-2"], [], UNICODE)


def test_agent_file_summary_and_rename():
    data = agent_file("Helper", {"persona": "p", "human": "h"}, 4)
    summary = summarize_agent_file(data)
    assert (summary.name, summary.blocks, summary.messages) == (
        "Helper",
        {"persona": "p", "human": "h"},
        4,
    )
    renamed = summarize_agent_file(rename_agent_file(data, "Helper restored 2026-11-23"))
    assert renamed.name == "Helper restored 2026-11-23" and renamed.blocks == summary.blocks
    old_format = json.dumps({"name": "Old", "memory": {"blocks": [{"label": "x"}]}}).encode()
    assert summarize_agent_file(old_format).blocks == {"x": ""}
    with pytest.raises(AgentFileError):
        summarize_agent_file(b"not json")


# --------------------------------------------------------------------------- restore target


def test_password_in_database_uri_is_refused():
    with pytest.raises(RestoreTargetRefused, match="PGPASSWORD"):
        target_database("postgresql://letta:s3cret@127.0.0.1:5432/staging", {})


def test_password_comes_from_pgpassword():
    db = target_database("postgresql://letta@127.0.0.1:5433/staging", {"PGPASSWORD": "p@ss/word"})
    assert db.libpq_env()["PGPASSWORD"] == "p@ss/word"
    assert db.database_name == "staging" and "p@ss" not in db.redacted_uri()
    other = target_database("postgresql://letta@localhost:5433/staging", {})
    assert same_database(db, other)
    assert not same_database(db, other.for_database("letta"))


def test_cli_refuses_password_before_any_run(capsys):
    code = main(["restore", "x", "--database", "postgresql://u:s3cret@127.0.0.1:5432/db"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PGPASSWORD" in err[0] and "s3cret" not in err[0]


def test_cli_renders_plans_and_reports():
    from letta_ops.cli.restore import (
        render_restore,
        render_restore_agents,
        render_rollback,
        render_rollback_plan,
    )
    from letta_ops.flows.reports.rollback import RollbackReport
    from letta_ops.flows.restore import RestoreReport
    from letta_ops.flows.restore_agents import AgentRestoreReport

    plan = {
        "server": "prod",
        "base_url": "http://127.0.0.1:8283",
        "runtime": "letta-ops' process runtime",
        "pg_tools": "PostgreSQL client tools in /usr/bin",
        "set": f"prod/{SET_A}",
        "set_created_at": "2026-11-23T02:15:00+00:00",
        "set_purpose": "pre-upgrade",
        "from_version": "0.16.2",
        "server_down": False,
        "to_version": "0.11.7",
        "agents_now": 5,
        "agents_in_set": 4,
        "agents_not_in_set": ["added"],
        "agents_coming_back": [],
        "tables": 40,
        "rows": 900,
        "database_bytes": 1_000_000,
        "objects_verified": 5,
        "steps": ["stop server", "start Letta 0.11.7"],
        "expected_downtime_seconds": 75,
        "reset_mode": "in-place",
        "database_role": "letta_owner",
        "postgres_major": 16,
    }
    planned = RollbackReport.model_validate({"plan": plan, "dry_run": True, "outcome": "planned"})
    assert "PostgreSQL 16, role letta_owner, emptied by in-place" in render_rollback_plan(planned)
    assert "not in the set (kept in the safety backup): added" in render_rollback_plan(planned)
    assert "set taken 2026-11-23T02:15:00+00:00 (pre-upgrade)" in render_rollback_plan(planned)
    assert "written since" not in render_rollback_plan(planned)  # a plan of an older letta-ops
    counted = {
        **plan,
        "written_since_set": {"messages": 12, "agents": 1, "blocks": 3, "passages": 0},
        "agents_created_since_set": ["added"],
    }
    confirmation = render_rollback_plan(
        RollbackReport.model_validate({"plan": counted, "dry_run": True, "outcome": "planned"})
    )
    assert (
        "written since the set (lost, kept in the safety backup): 12 messages, 1 agents, "
        "3 blocks, 0 passages\nagents created since the set: added\n" in confirmation
    )
    done = RollbackReport.model_validate(
        {
            "plan": plan,
            "dry_run": False,
            "outcome": "succeeded",
            "downtime_seconds": 41.0,
            "safety_set": f"prod/{SET_B}",
            "verification": {
                "ok": True,
                "version": "0.11.7",
                "agents": 4,
                "agents_equal": True,
                "agents_missing": [],
                "agents_unexpected": [],
                "count_differences": [],
            },
        }
    )
    assert f"undo with --to): prod/{SET_B}" in render_rollback(done)
    restored = RestoreReport.model_validate(
        {
            "plan": {
                "set": f"prod/{SET_A}",
                "set_created_at": "2026-11-23T02:15:00+00:00",
                "letta_version": "0.11.7",
                "target": "postgresql://u:***@127.0.0.1:5432/staging",
                "target_tables_before": 0,
                "replaces_existing": False,
                "reset_mode": "recreate",
                "objects_verified": 5,
                "tables": 40,
                "rows": 900,
                "agents_in_set": 4,
                "start": True,
                "base_url": "http://127.0.0.1:8300",
                "server_name": "127.0.0.1-8300",
            },
            "outcome": "succeeded",
            "server": {
                "version": "0.11.7",
                "base_url": "http://127.0.0.1:8300",
                "pid": 42,
                "auth": "password required",
            },
        }
    )
    assert "runs at http://127.0.0.1:8300" in render_restore(restored)
    agents = AgentRestoreReport.model_validate(
        {
            "set": f"prod/{SET_A}",
            "server": "prod",
            "letta_version": "0.16.2",
            "as_copy": False,
            "outcome": "succeeded",
            "note": "files are partial",
            "agents": [
                {
                    "agent_id": "agent-1",
                    "name_in_set": "Helper",
                    "restored_as": "Helper",
                    "renamed": False,
                    "new_id": "agent-new",
                    "blocks": 2,
                    "blocks_match": True,
                    "messages_restored": 4,
                    "messages_in_file": 4,
                    "ok": True,
                }
            ],
        }
    )
    assert "agent-new" in render_restore_agents(agents)
