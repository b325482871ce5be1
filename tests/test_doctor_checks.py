"""The doctor's verdicts, from the facts each check gathers (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.doctor import checks, findings

URI = "postgresql://letta:s3cret-pw@127.0.0.1:5432/letta"


def test_health():
    assert checks.check_health({"status": "ok", "version": "0.16.2"}, None, "u").status == "ok"
    down = checks.check_health(None, "connection refused", "http://127.0.0.1:8283")
    assert down.status == "action" and "runtime start" in down.fix


def test_alembic_head_per_version():
    assert checks.check_alembic("27de0f58e076", "0.16.2").status == "ok"
    behind = checks.check_alembic("5fb8bba2c373", "0.16.2")
    assert behind.status == "action" and "27de0f58e076" in behind.detail
    assert checks.check_alembic(None, "0.16.2").status == "action"
    assert checks.check_alembic("abc", "0.13.0").status == "ok"  # no known head: no verdict
    assert checks.check_alembic("abc", None).status == "skipped"


def test_pgvector():
    assert checks.check_pgvector("0.8.6").status == "ok"
    assert "CREATE EXTENSION" in checks.check_pgvector(None).fix


def test_database_uri_explicit_same_database_and_never_echoes_the_password():
    db = LettaDatabase(uri=SecretStr(URI))
    assert checks.check_database_uri(db, None, {"LETTA_PG_URI": URI}, None).status == "ok"
    missing = checks.check_database_uri(db, None, {"HOME": "/x"}, None)
    assert missing.status == "action" and "SQLite" in missing.detail
    other = URI.replace("/letta", "/elsewhere")
    moved = checks.check_database_uri(db, None, {"LETTA_PG_URI": other}, None)
    assert moved.status == "action" and "elsewhere" in moved.detail
    placeholder = "postgresql://user:password@host:5432/dbname"
    bad = checks.check_database_uri(db, None, {"LETTA_PG_URI": placeholder}, None)
    assert bad.status == "action" and "placeholder" in bad.detail
    no_config = checks.check_database_uri(None, "The URI is empty", None, None)
    assert no_config.status == "action"
    compose = checks.check_database_uri(db, None, None, "services:\n  letta:\n    image: x\n")
    assert compose.status == "action" and "compose" in compose.detail
    for finding in (moved, bad, missing):
        assert "s3cret-pw" not in f"{finding.detail} {finding.fix}"


def test_home_writable(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    assert checks.check_home_writable({"HOME": str(home)}, tmp_path / "x").status == "ok"
    gone = checks.check_home_writable({"HOME": str(tmp_path / "nope")}, tmp_path / "x")
    assert gone.status == "action"
    assert checks.check_home_writable(None, tmp_path / "never-started").status == "skipped"


def test_sequences_one_finding_per_problem():
    healthy = [{"ok": True, "problem": None}, {"ok": True, "problem": None}]
    assert [f.status for f in checks.check_sequences(healthy)] == ["ok"]
    broken = [{"ok": False, "problem": "messages.sequence_id has no default"}, *healthy]
    [finding] = checks.check_sequences(broken)
    assert finding.status == "action" and "repair-sequences" in finding.fix


def test_encryption_key_from_0_12():
    assert checks.check_encryption_key("0.11.7", False).status == "ok"
    assert checks.check_encryption_key("0.16.2", False).status == "action"
    assert checks.check_encryption_key("0.16.2", True).status == "ok"
    assert checks.encryption_key_sources({"LETTA_ENCRYPTION_KEY": "k"}, set(), None)
    assert not checks.encryption_key_sources({"LETTA_ENCRYPTION_KEY": ""}, set(), None)
    assert checks.encryption_key_sources(None, set(), "LETTA_ENCRYPTION_KEY: ${KEY}")


def test_compose_pin(tmp_path: Path):
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  letta:\n    image: letta/letta:latest\n")
    assert checks.check_compose_pin(compose, "letta").status == "action"
    compose.write_text("services:\n  letta:\n    image: letta/letta\n")
    assert checks.check_compose_pin(compose, "letta").status == "action"
    compose.write_text("services:\n  letta:\n    image: letta/letta:0.16.2\n")
    assert checks.check_compose_pin(compose, "letta").status == "ok"
    assert checks.check_compose_pin(None, "letta").status == "skipped"


def test_dump_space(tmp_path: Path):
    assert checks.check_dump_space(1024, tmp_path).status == "ok"
    assert checks.check_dump_space(10**18, tmp_path).status == "action"


def test_backup_age():
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    fresh = checks.check_backup_age(now - timedelta(hours=3), now, 26, "s3://b/p")
    assert fresh.status == "ok"
    assert checks.check_backup_age(now - timedelta(days=3), now, 26, "s3://b/p").status == "action"
    assert checks.check_backup_age(None, now, 26, "s3://b/p").status == "action"


def test_a_failing_check_is_a_finding_and_needs_action_counts_actions():
    def boom() -> findings.Finding:
        raise RuntimeError("relation messages does not exist\nDETAIL: ...")

    [finding] = findings.guarded("sequences", boom)
    assert finding.status == "action" and finding.detail.endswith("does not exist")
    assert checks.needs_action([finding])
    assert not checks.needs_action([findings.ok("health", "fine"), findings.skipped("x", "y")])
