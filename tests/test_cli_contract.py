"""The command line's contract with scripts: exit codes by error class, the ``--json`` shapes,
one dry-run vocabulary, and read-only commands that answer without loading Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from letta_ops.cli.main import build_parser, main
from letta_ops.cli.output import to_json
from letta_ops.tasks.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NEEDS_ACTION, EXIT_OK
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION
from tests.fixtures.hand_made_manifest import hand_made_manifest

PROBE = """
import json, sys
from letta_ops.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("prefect", "boto3", "alembic") if m in sys.modules)
sys.stderr.write("PROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


def _env_only(tmp_path: Path) -> dict[str, str]:
    """A server described by environment variables only (no saved blocks, no Prefect API)."""
    (tmp_path / "store").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "LETTA_OPS_STORE": (tmp_path / "store").as_uri(),
        "LETTA_OPS_AUDIT_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "LETTA_OPS_STATE_DIR": str(tmp_path / "state"),
        "LETTA_BASE_URL": "http://127.0.0.1:9",
        "LETTA_OPS_SERVER_NAME": "contract",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # no profiles file that sets a URL
    }
    for name in ("PREFECT_API_URL", "PREFECT_UI_URL", "LETTA_OPS_RUNTIME"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize(
    "argv,code",
    [
        (["backups", "list", "--json"], EXIT_OK),
        (["history", "--json"], EXIT_OK),
        (["runtime", "status", "--json"], EXIT_NEEDS_ACTION),
    ],
)
def test_read_only_commands_load_no_prefect(argv, code, tmp_path):
    env = _env_only(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    [probe] = [line for line in out.stderr.splitlines() if line.startswith("PROBE ")]
    # A fresh audit store is created once with alembic; later calls never import it.
    assert json.loads(probe.removeprefix("PROBE ")) == {
        "code": code,
        "heavy": ["alembic"] if argv[0] == "history" else [],
    }, out.stderr
    if argv[0] == "history":
        again = subprocess.run(
            [sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True
        )
        assert '"heavy": []' in again.stderr, again.stderr
    document = json.loads(out.stdout)
    assert document["schema_version"] == SCHEMA_VERSION
    if argv[0] == "runtime":
        assert document["kind"] == "process"
        assert document["state_dir"] == str(tmp_path / "state" / "contract")
    else:  # an empty store, a fresh audit store: no rows, under their key
        assert document == {
            "schema_version": SCHEMA_VERSION,
            "sets" if argv[0] == "backups" else "records": [],
        }


#: The listings: argv, and the key their rows go under in the ``--json`` object.
LISTINGS = [(["backups", "list"], "sets"), (["history"], "records")]


@pytest.fixture
def listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment-only server "contract" with rows to list: in its local store a
    complete, verified set and a set a killed run left without a manifest; in a fresh SQLite
    audit store two runs."""
    from letta_ops.tasks.audit.store import AuditRecord, AuditStore
    from letta_ops.tasks.sets.catalog import record_verification
    from letta_ops.tasks.sets.manifest import MANIFEST_NAME, ManifestObject
    from letta_ops.tasks.store.local import LocalObjectStore

    for name, value in _env_only(tmp_path).items():
        monkeypatch.setenv(name, value)
    store = LocalObjectStore(tmp_path / "store")
    store.put_bytes("contract/20261122T021500Z-abcd/database.dump", b"cut short")
    prefix = "contract/20261123T021500Z-abcd/"
    dump = store.put_bytes(prefix + "database.dump", b"dump")
    moment = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    manifest = hand_made_manifest(
        "20261123T021500Z-abcd",
        "contract",
        dump.key,
        {dump.key: ManifestObject(size=dump.size, sha256=dump.sha256)},
        created_at=moment,
        base_url="http://127.0.0.1:9",
        postgres_version="18.1",
        row_counts={"agents": 0},
    )
    store.put_bytes(prefix + MANIFEST_NAME, manifest.to_json())
    record_verification(store, prefix, {"ok": True})
    audit = AuditStore.from_env()
    for record_id, operation, minute in (("run-1", "backup", 15), ("run-2", "verify", 30)):
        audit.save(
            AuditRecord(
                record_id=record_id,
                operation=operation,
                server="contract",
                outcome="succeeded",
                started_at=moment.replace(minute=minute),
            )
        )
    return tmp_path


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,key", LISTINGS)
def test_listings_print_their_rows_under_a_key_beside_the_schema_version(argv, key, listed, capsys):
    code, out, err = _run(capsys, [*argv, "--json"])
    assert code == EXIT_OK, err
    document = json.loads(out)
    assert isinstance(document, dict) and list(document) == ["schema_version", key]
    assert document["schema_version"] == SCHEMA_VERSION
    assert "deprecated" not in err
    rows = document[key]
    if key == "sets":  # the rows' shape as before
        by_set = {row["set"]: row for row in rows}
        assert sorted(by_set) == [
            "contract/20261122T021500Z-abcd",
            "contract/20261123T021500Z-abcd",
        ]
        complete, killed = (
            by_set["contract/20261123T021500Z-abcd"],
            by_set["contract/20261122T021500Z-abcd"],
        )
        assert set(complete) == {
            "set",
            "created_at",
            "complete",
            "verified",
            "pinned",
            "purpose",
            "bytes",
            "status",
            "trust",
            "trust_reason",
            "verification",
            "pinned_until",
        }
        assert complete["created_at"] == "2026-11-23T02:15:00Z"
        assert (complete["status"], complete["trust"]) == ("VERIFIED", "keyless")
        assert complete["complete"] and complete["verified"] and not complete["pinned"]
        assert complete["purpose"] == "manual" and complete["bytes"] > 0
        assert killed["complete"] is False and killed["created_at"] is None
    else:  # newest first: whole audit records and their Prefect link
        from letta_ops.tasks.audit.store import AuditRecord

        assert [row["record_id"] for row in rows] == ["run-2", "run-1"]
        assert all(set(row) == {*AuditRecord.model_fields, "prefect_url"} for row in rows)
        started = datetime.fromisoformat(rows[0]["started_at"])
        assert started == datetime(2026, 11, 23, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize("argv,key", LISTINGS)
def test_json_list_still_prints_the_plain_list_and_says_it_is_deprecated(argv, key, listed, capsys):
    code, out, _ = _run(capsys, [*argv, "--json"])
    assert code == EXIT_OK
    rows = json.loads(out)[key]
    code, out, err = _run(capsys, [*argv, "--json-list"])
    assert code == EXIT_OK
    assert json.loads(out) == rows and len(rows) == 2  # the same rows, as a list
    [line] = err.strip().splitlines()
    assert line.startswith("letta-ops: warning: --json-list is deprecated")
    assert "will be removed" in line and "--json" in line
    # A failure is still the {"error", "exit_code"} document on stdout, as with --json.
    bad_store = ["--store", "ftp://x/y"] if key == "sets" else ["--rebuild", "--store", "ftp://x/y"]
    code, out, err = _run(capsys, [*argv, "--json-list", *bad_store])
    assert code == EXIT_BAD_INPUT
    assert json.loads(out)["exit_code"] == EXIT_BAD_INPUT and "s3://" in err
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == EXIT_OK
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--json-list deprecated, will be removed in the next release" in help_text


@pytest.mark.parametrize("argv,key", LISTINGS)
def test_json_and_json_list_exclude_each_other(argv, key, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--json", "--json-list"])
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--json-list: not allowed with argument --json" in err


def test_a_bad_url_is_refused_alike_with_and_without_blocks(tmp_path, monkeypatch, capsys):
    """The name comes from letta_ops.tasks.server_naming on both paths: the same refusal, exit 2."""
    for name, value in _env_only(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LETTA_BASE_URL", "ftp://letta.example")
    assert main(["backups", "list"]) == EXIT_BAD_INPUT  # no blocks loaded
    fast = capsys.readouterr().err.strip()
    assert main(["runtime", "stop"]) == EXIT_BAD_INPUT  # the profile's blocks
    profile = capsys.readouterr().err.strip()
    assert fast == profile
    assert "'ftp://letta.example' is not an http(s) URL" in fast


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LETTA_BASE_URL": "http://10.0.0.5:8283/v1/"},
        {"LETTA_BASE_URL": "https://letta.example.com"},
        {"LETTA_OPS_SERVER_NAME": "prod/eu west", "LETTA_BASE_URL": "http://h:1"},
        {"LETTA_OPS_SERVER_NAME": "../..", "LETTA_BASE_URL": "http://h:1"},
    ],
)
def test_the_name_without_blocks_is_the_blocks_name(env):
    from letta_ops.blocks.letta_server import LettaServer
    from letta_ops.tasks.server_naming import server_name_from_env

    assert server_name_from_env(env) == LettaServer.from_env(env).server_name


def _raising(monkeypatch, error: BaseException) -> None:
    from letta_ops.cli import runtime

    def command(args):
        raise error

    monkeypatch.setattr(runtime, "cmd_runtime_status", command)


def _validation_error(**values) -> Exception:
    from letta_ops.tasks.sets.retention import RetentionPolicy

    try:
        RetentionPolicy(**values)
    except Exception as exc:  # noqa: BLE001 - the ValidationError itself is the point
        return exc
    raise AssertionError("no validation error")


def test_a_validation_error_is_a_refusal_only_when_a_validator_refused(monkeypatch, capsys):
    # A validator that raised Refused (a policy keeping nothing): bad input, exit 2.
    _raising(
        monkeypatch, _validation_error(keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0)
    )
    assert main(["runtime", "status", "--json"]) == EXIT_BAD_INPUT
    assert "must keep something" in json.loads(capsys.readouterr().out)["error"]
    # Any other ValidationError (a value that does not parse, a reply of the wrong shape):
    # something ran and broke, exit 1.
    _raising(monkeypatch, _validation_error(keep_last="many"))
    assert main(["runtime", "status", "--json"]) == EXIT_FAILED
    failure = json.loads(capsys.readouterr().out)
    assert failure["exit_code"] == EXIT_FAILED and "\n" not in failure["error"]


def test_json_times_are_iso_and_state_outputs_carry_a_schema_version():
    moment = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    document = json.loads(to_json({"created_at": moment, "path": Path("/x")}, versioned=True))
    assert document == {
        "schema_version": SCHEMA_VERSION,
        "created_at": "2026-11-23T02:15:00Z",
        "path": "/x",
    }
    # Only an object gets one: a list (what the deprecated --json-list prints) stays a list.
    assert json.loads(to_json([{"created_at": moment}], versioned=True)) == [
        {"created_at": "2026-11-23T02:15:00Z"}
    ]


@pytest.mark.parametrize(
    "argv,dry_run",
    [
        (["prune"], False),
        (["prune", "--dry-run"], True),
        (["restore", "S", "--database", "blk", "--dry-run"], True),
        (["unlock", "--dry-run"], True),
        (["upgrade", "--to", "0.16.2", "--dry-run"], True),
        (["rollback", "--dry-run"], True),
        (["recover", "--dry-run"], True),
        (["cleanup-sources", "--dry-run"], True),
        (["rename-agents", "--sanitize", "--dry-run"], True),
        (["sync-tools", "--control", "c", "--dry-run"], True),
        (["repair-sequences", "--dry-run"], True),
    ],
)
def test_every_command_that_deletes_or_replaces_accepts_dry_run(argv, dry_run):
    assert build_parser().parse_args(argv).dry_run is dry_run


@pytest.mark.parametrize("command", ["prune", "cleanup-sources", "rename-agents --sanitize"])
def test_dry_run_and_execute_exclude_each_other(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--dry-run", "--execute"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "not allowed with argument" in capsys.readouterr().err


def test_area_modules_never_import_the_parser_module():
    """No circle: areas import cli.output / cli.errors / cli.options, never cli.main."""
    import ast

    for path in Path("cli").glob("*.py"):
        if path.name in ("main.py", "__main__.py"):
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        assert not imported & {"letta_ops.cli.main"}, path


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--keep-last", "-1"],
        ["runtime", "status", "--port", "0"],
        ["restore", "S", "--database", "blk", "--start", "--port", "70000"],
    ],
)
def test_values_a_model_would_reject_are_refused_by_the_parser(argv, capsys):
    """Refused before any run (exit 2), not a ValidationError inside it (exit 1)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("letta-ops: error: argument --")
