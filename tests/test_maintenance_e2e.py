"""Maintenance flows on one real Letta 0.16.2 server: tool sync, folder cleanup, sequences,
doctor. One server for the whole module; each test builds the state it needs on it."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from letta_ops.cli.main import main
from letta_ops.flows.cleanup_sources import cleanup_sources
from letta_ops.flows.doctor import DoctorReport
from letta_ops.flows.sync_tools import sync_tools
from letta_ops.tasks.errors import EXIT_NEEDS_ACTION, EXIT_OK
from letta_ops.tasks.letta.api import LettaAPIError, offline_agent_body
from letta_ops.tasks.letta.source_cleanup import get_or_create_folder
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.runs.context import artifact_key, json_of_artifact
from letta_ops.tasks.sets.catalog import list_backup_sets
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, operator_env
from tests.fixtures.prefect import flow_run_artifacts

pytestmark = pytest.mark.e2e

FLEET = 42


@pytest.fixture(scope="module")
def letta(start_letta):
    return start_letta(NEW_VERSION, "maintenance")


@pytest.fixture
def store(letta, s3_env, s3_bucket, monkeypatch, prefect_harness) -> S3ObjectStore:
    """Point letta-ops at the module's server and a fresh bucket, as an operator's env would."""
    client, bucket, _ = s3_bucket
    for name, value in operator_env(letta, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    return S3ObjectStore(client, bucket, "backups")


def cli_json(capsys, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def tool_source(name: str) -> str:
    return (
        f"def {name}(text: str) -> str:\n"
        f'    """Echo the text ({name}).\n\n'
        "    Args:\n        text: what to echo\n\n"
        "    Returns:\n        str: the same text\n"
        '    """\n'
        "    return text\n"
    )


def tools_in_sql(database, agent_ids: list[str]) -> dict[str, set[str]]:
    """Each agent's tool ids as the database holds them: a check independent of the API."""
    with connect(database) as conn:
        rows = conn.execute(
            sa.text("SELECT agent_id, tool_id FROM tools_agents WHERE agent_id = ANY(:ids)"),
            {"ids": agent_ids},
        ).all()
    found: dict[str, set[str]] = {a: set() for a in agent_ids}
    for agent_id, tool_id in rows:
        found[agent_id].add(tool_id)
    return found


def agent_body(name: str, tool_ids: list[str], tags: list[str]) -> dict:
    return {
        **offline_agent_body(name),
        "include_base_tools": False,
        "tool_ids": tool_ids,
        "tags": tags,
    }


# --------------------------------------------------------------------------- tool sync


def test_tool_sync_42_agents_additive_exact_idempotent(letta, store, capsys):
    with letta.client() as client:
        tools = [client.create_tool(tool_source(f"fleet_tool_{i:02d}")) for i in range(10)]
        extra = client.create_tool(tool_source("fleet_extra_tool"))
        control_ids = [t["id"] for t in tools]
        client.create_agent(agent_body("fleet-control", control_ids, ["control"]))
        bystander = client.create_agent(agent_body("bystander", [extra["id"]], ["other"]))
        target_tools = control_ids[:7] + [extra["id"]]
        with ThreadPoolExecutor(max_workers=4) as pool:
            targets = list(
                pool.map(
                    lambda i: client.create_agent(
                        agent_body(f"fleet-{i:02d}", target_tools, ["fleet"])
                    ),
                    range(FLEET),
                )
            )
        assert len(targets) == FLEET

        selection = {"control_agent": "fleet-control", "tags": ["fleet"]}
        plan = sync_tools(**selection, dry_run=True)
        assert (plan.targets, plan.attached, plan.detached) == (FLEET, 3 * FLEET, 0)
        exact_plan = sync_tools(**selection, mode="exact")  # exact plans unless told otherwise
        assert exact_plan.dry_run is True
        assert (exact_plan.attached, exact_plan.detached) == (3 * FLEET, FLEET)
        target_ids = [a["id"] for a in targets]
        initial = {a: set(target_tools) for a in target_ids}
        assert tools_in_sql(letta.database, target_ids) == initial  # plans change nothing

        additive = sync_tools(**selection)
        assert additive.dry_run is False and additive.errors == 0
        assert (additive.attached, additive.detached) == (3 * FLEET, 0)
        synced = {*control_ids, extra["id"]}
        assert tools_in_sql(letta.database, target_ids) == {a: synced for a in target_ids}
        # 11 tools: more than 0.16.x's default page of 10, so this read must page.
        assert {t["id"] for t in client.list_agent_tools(targets[0]["id"])} == synced

        code, exact = cli_json(
            capsys, "sync-tools", "--control", "fleet-control", "--tag", "fleet",
            "--mode", "exact", "--execute",
        )  # fmt: skip
        assert code == EXIT_OK
        assert (exact["attached"], exact["detached"], exact["errors"]) == (0, FLEET, 0)
        exact_set = set(control_ids)
        assert tools_in_sql(letta.database, target_ids) == {a: exact_set for a in target_ids}

        code, again = cli_json(
            capsys, "sync-tools", "--control", "fleet-control", "--tag", "fleet",
            "--mode", "exact", "--execute",
        )  # fmt: skip
        assert code == EXIT_OK
        assert (again["attached"], again["detached"], again["unchanged_agents"]) == (0, 0, FLEET)
        assert [t["id"] for t in client.list_agent_tools(bystander["id"])] == [extra["id"]]

    code = main(["sync-tools", "--control", "no-such-agent", "--tag", "fleet"])
    assert code == 2  # bad input, one sentence, nothing changed


# --------------------------------------------------------------------------- folders


def _insert_phantoms(database) -> dict[str, str]:
    """Two rows the folder list shows but the API cannot delete: a soft-deleted row (404)
    and a row whose id is not source-<uuid4> (422)."""
    ids = {"ghost": f"source-{uuid.uuid4()}", "ghost-v1": f"source-{uuid.uuid1()}"}
    with connect(database) as conn:
        for name, source_id in ids.items():
            conn.execute(
                sa.text(
                    "INSERT INTO sources (id, name, embedding_config, is_deleted, "
                    "organization_id, vector_db_provider) SELECT :id, :name, embedding_config, "
                    ":deleted, organization_id, vector_db_provider FROM sources LIMIT 1"
                ),
                {"id": source_id, "name": name, "deleted": name == "ghost"},
            )
        conn.commit()
    return ids


def test_cleanup_removes_orphans_duplicates_and_phantoms_only(letta, store, capsys):
    embedding = offline_agent_body("x")["embedding_config"]

    def folder(name: str, description: str = "team knowledge") -> dict:
        body = {"name": name, "description": description, "embedding_config": embedding}
        return get_or_create_folder(client, body)[0]

    with letta.client() as client:
        reader_a = client.create_agent(offline_agent_body("reader-a"))
        reader_b = client.create_agent(offline_agent_body("reader-b"))
        kb, handbook, handbook_2 = folder("kb"), folder("handbook"), folder("handbook_2")
        for agent, attached in ((reader_a, kb), (reader_b, handbook), (reader_b, handbook_2)):
            client.attach_folder(agent["id"], attached["id"])
        # get-or-create: a 409 returns the real existing folder, found across pages.
        again, created = get_or_create_folder(
            client, {"name": "kb", "description": "team knowledge", "embedding_config": embedding}
        )
        assert (again["id"], created) == (kb["id"], False)
        debris = {
            "kb_2": folder("kb_2")["id"],
            "kb_1a2b3c4d": folder("kb_1a2b3c4d")["id"],
            "scratch": folder("scratch", "tmp")["id"],
        }
        phantoms = _insert_phantoms(letta.database)
        before = {f["id"] for f in client.list_folders()}
        kept = {kb["id"], handbook["id"], handbook_2["id"]}

        plan = cleanup_sources()
        assert plan.executed is False
        by_name = {i.name: i for i in plan.remove}
        assert set(by_name) == {*debris, *phantoms}
        assert by_name["kb_2"].category == by_name["kb_1a2b3c4d"].category == "duplicate"
        assert by_name["scratch"].category == "orphan"
        assert {by_name[n].category for n in phantoms} == {"phantom"}
        assert any(k.id == handbook_2["id"] for k in plan.kept)
        assert {f["id"] for f in client.list_folders()} == before  # a plan deletes nothing

        code, done = cli_json(capsys, "cleanup-sources", "--execute", "--sql")
        assert code == EXIT_OK, done
        assert (done["removed"], done["left"]) == (5, 0)
        after = {f["id"] for f in client.list_folders()}
        assert after == before - set(debris.values()) - set(phantoms.values())
        assert kept <= after
        assert [f["id"] for f in client.list_agent_folders(reader_a["id"])] == [kb["id"]]
        assert {f["id"] for f in client.list_agent_folders(reader_b["id"])} == {
            handbook["id"],
            handbook_2["id"],
        }
    [pre] = list_backup_sets(store)
    assert pre.purpose == "pre-cleanup" and pre.verified
    assert done["backup_set"].endswith(pre.set_id)


# --------------------------------------------------------------------------- sequences


def test_doctor_finds_dropped_default_and_repair_fixes_it(letta, store, capsys):
    with connect(letta.database) as conn:
        conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN sequence_id DROP DEFAULT"))
        conn.commit()
    with letta.client() as client, pytest.raises(LettaAPIError):
        client.create_agent(offline_agent_body("needs-sequence"))

    code, report = cli_json(capsys, "doctor")
    assert code == EXIT_NEEDS_ACTION
    findings = {f["check"]: f for f in report["findings"]}
    assert findings["sequences"]["status"] == "action"
    assert "no default" in findings["sequences"]["detail"]
    assert findings["sequences"]["fix"]
    for check in ("health", "alembic", "pgvector", "database-uri", "home-writable"):
        assert findings[check]["status"] == "ok", findings[check]

    code, planned = cli_json(capsys, "repair-sequences", "--dry-run")
    assert code == EXIT_OK
    assert "set-default" in {c["action"] for c in planned["changes"]}
    code, repaired = cli_json(capsys, "repair-sequences")
    assert code == EXIT_OK and repaired["problems_after"] == []
    assert "set-default" in {c["action"] for c in repaired["changes"]}
    code, rerun = cli_json(capsys, "repair-sequences")
    assert rerun["changes"] == []

    with letta.client() as client:
        assert client.create_agent(offline_agent_body("works-again"))["id"]
    # The test bed's own weaknesses are actions too (moto's credentials may delete unlocked,
    # unencrypted sets; the server is open): ignored here by name, asserted in
    # test_object_lock_e2e and test_encryption_e2e.
    ignored = (
        "encryption-key",
        "backup-age",
        "backup-encryption",
        "backup-authentication",
        "backup-delete",
        "server-auth",
    )
    code, report = cli_json(
        capsys, "doctor", *[part for check in ignored for part in ("--ignore", check)]
    )
    assert code == EXIT_OK, [f for f in report["findings"] if f["status"] == "action"]
    assert {f["check"]: f["status"] for f in report["findings"]}["sequences"] == "ok"


# --------------------------------------------------------------------------- doctor artifact


def doctor_run_ids(server: str) -> set[str]:
    """Ids of every doctor run of ``server`` the session's Prefect server knows (by the tags
    every letta-ops run carries)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    tags = FlowRunFilter(tags=FlowRunFilterTags(all_=["op:doctor", f"server:{server}"]))
    with get_client(sync_client=True) as client:
        return {str(run.id) for run in client.read_flow_runs(flow_run_filter=tags, limit=200)}


def test_doctor_json_is_its_runs_artifact(letta, store, capsys):
    """A script that reads runs (not shells) gets the doctor's --json from the run's artifact
    ``doctor-<server>-json``: the same document, read here from the CLI run's own artifacts."""
    server = letta.runtime.server_name
    before = doctor_run_ids(server)
    code, printed = cli_json(capsys, "doctor")
    assert code in (EXIT_OK, EXIT_NEEDS_ACTION)
    [run_id] = doctor_run_ids(server) - before
    artifacts = {a.key: a for a in flow_run_artifacts([run_id])}
    key = artifact_key("doctor", server, "json")
    assert key == f"doctor-{server}-json" and key in artifacts, sorted(artifacts)
    published = json_of_artifact(artifacts[key].data)
    assert published == printed
    assert published["server"] == server and published["findings"]
    assert DoctorReport.model_validate(published).needs_action == (code == EXIT_NEEDS_ACTION)
