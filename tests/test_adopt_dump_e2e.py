"""``backups adopt`` (issue #31, item 4): a ``pg_dump -Fc`` made by hand of a real Letta
database becomes a verified set, and ``rollback --to`` it brings back exactly the dumped content
(the tests' own digests), as does ``restore`` of it onto another, empty database; files that are
not a Letta dump of this schema are refused whole."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.cli.main import main
from letta_ops.flows.adopt_dump import adopt_dump
from letta_ops.tasks.errors import EXIT_BAD_INPUT, EXIT_OK
from letta_ops.tasks.letta.api import offline_agent_body
from letta_ops.tasks.postgres.dump import tool
from letta_ops.tasks.sets.catalog import list_backup_sets, load_manifest
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import OLD_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_execute,
    sql_table_counts,
    sql_table_digests,
)

pytestmark = pytest.mark.e2e


def _hand_dump(db: LettaDatabase, path: Path) -> Path:
    """What an operator runs: plain ``pg_dump -Fc`` of the whole database, no letta-ops code
    but the path of the bundled binary."""
    p = db.parts
    subprocess.run(
        [tool(db, "pg_dump"), "-Fc", "-f", str(path), "-h", str(p["host"]), "-p", str(p["port"])]
        + ["-U", str(p["user"]), "-d", str(p["database"])],
        env={**os.environ, "PGPASSWORD": str(p["password"])},
        check=True,
        capture_output=True,
    )
    return path


def test_adopt_a_hand_made_dump_then_roll_back_to_it(
    start_letta,
    letta_template,
    make_database,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    tmp_path,
    capsys,
):
    s3, bucket, _ = s3_bucket
    running = start_letta(OLD_VERSION, "adopt-e2e")
    with running.client() as client:
        seed_agents(client, 3, prefix="ad")
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    store = S3ObjectStore(s3, bucket, "backups")

    dump = _hand_dump(running.database, tmp_path / "letta-before-upgrade.dump")
    dumped_digests = sql_table_digests(running.database)
    dumped_counts = sql_table_counts(running.database)
    dumped_agents = http_agents(running.server.base_url)

    # Refused, one sentence each, nothing stored: garbage, a non-Letta database, a Letta
    # schema at a revision no release has, Letta's tables in another schema.
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(os.urandom(4096))
    other = make_database("not_letta")
    sql_execute(other, "CREATE TABLE notes (id int primary key, body text)")
    sql_execute(other, "INSERT INTO notes VALUES (1, 'x')")
    unknown = letta_template(OLD_VERSION, "adopt_unknown")
    sql_execute(unknown, "UPDATE alembic_version SET version_num = '0000deadbeef'")
    moved = letta_template(OLD_VERSION, "adopt_schema")
    sql_execute(moved, "ALTER SCHEMA public RENAME TO letta")
    refusals = {
        garbage: "is not a custom-format pg_dump archive",
        _hand_dump(other, tmp_path / "notes.dump"): "holds no Letta database",
        _hand_dump(unknown, tmp_path / "unknown.dump"): "not the head of any Letta release",
        _hand_dump(moved, tmp_path / "schema.dump"): "in schema 'letta'",
    }
    for path, sentence in refusals.items():
        capsys.readouterr()
        assert main(["backups", "adopt", str(path)]) == EXIT_BAD_INPUT, path
        [line] = capsys.readouterr().err.strip().splitlines()[-1:]
        assert sentence in line, line
    assert list_backup_sets(store) == []

    # A dry run inspects and stores nothing; the adoption stores a verified set.
    plan = adopt_dump(str(dump), dry_run=True)
    assert plan.set is None and list_backup_sets(store) == []
    report = adopt_dump(str(dump))
    assert report.verified and report.letta_version == OLD_VERSION
    assert report.agents == 3 and report.schema_ == "public"
    manifest = load_manifest(store, *report.set.split("/"))
    assert manifest.purpose == "adopted" and manifest.letta_version == OLD_VERSION
    # The manifest's counts come from restoring the dump: those of the tests' own SQL.
    assert {t: n for t, n in manifest.row_counts.items()} == {
        t: dumped_counts[t] for t in manifest.row_counts
    }
    assert {a.id: a.name for a in manifest.agents} == dumped_agents
    [listed] = list_backup_sets(store)
    assert listed.complete and listed.verified

    # The server moves on: an agent added, one deleted.
    with running.client() as client:
        client.create_agent(offline_agent_body("after-the-dump"))
        client.delete_agent(next(iter(sorted(dumped_agents))))
    assert digest_differences(dumped_digests, sql_table_digests(running.database))

    # rollback --to the adopted set: exactly the dumped content again.
    assert main(["rollback", "--to", report.set, "--yes"]) == EXIT_OK
    assert http_version(running.server.base_url) == OLD_VERSION
    assert http_agents(running.server.base_url) == dumped_agents
    assert digest_differences(dumped_digests, sql_table_digests(running.database)) == {}

    # restore of the adopted set onto another, empty database: the dumped content there too.
    elsewhere = make_database("adopt_restored")
    parts = elsewhere.parts  # the password in PGPASSWORD, never on the command line
    monkeypatch.setenv("PGPASSWORD", str(parts["password"]))
    uri = f"postgresql://{parts['user']}@127.0.0.1:{parts['port']}/{parts['database']}"
    assert main(["restore", report.set, "--database", uri, "--yes"]) == EXIT_OK
    assert digest_differences(dumped_digests, sql_table_digests(elsewhere)) == {}
    assert sql_table_counts(elsewhere) == dumped_counts
