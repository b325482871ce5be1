"""The command line: bad input gets one sentence and exit 2; deployments are well formed."""

from __future__ import annotations

import json
import socket

import pytest

from letta_ops.cli.deployments import build_runner_deployments, load_deployments, load_flow
from letta_ops.cli.main import main
from letta_ops.tasks.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NEEDS_ACTION

#: prefect.yaml's schedules: deployment -> [(cron, timezone, active)].
SCHEDULES = {
    "nightly-backup": [("15 2 * * *", "UTC", True)],
    "weekly-restore-drill": [("30 4 * * 0", "UTC", True)],
    "nightly-prune": [("45 3 * * *", "UTC", True)],
    "weekly-cleanup-sources-plan": [("0 5 * * 1", "UTC", True)],
    "daily-doctor": [("0 6 * * *", "UTC", True)],
}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[0].startswith("letta-ops: error: ")
    return err[0]


@pytest.mark.parametrize("version", ["latest", "0.34.0"])
def test_runtime_start_refuses_unpinned_versions(version, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["runtime", "start", "--version", version])
    assert exit_.value.code == EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert ("Letta Code" if version == "0.34.0" else "not a pinned release") in line


def test_placeholder_database_uri_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("LETTA_PG_URI", "postgresql://user:pass@host:5432/dbname")
    assert main(["runtime", "migrate", "--version", "0.16.2"]) == EXIT_BAD_INPUT
    assert "placeholder" in _one_error_line(capsys)


def test_missing_store_is_one_sentence(monkeypatch, capsys):
    monkeypatch.delenv("LETTA_OPS_STORE", raising=False)
    assert main(["backups", "list"]) == EXIT_BAD_INPUT
    assert "--store" in _one_error_line(capsys)


def test_unknown_store_scheme(capsys):
    assert main(["backups", "list", "--store", "ftp://x/y"]) == EXIT_BAD_INPUT
    assert "s3://" in _one_error_line(capsys)


def test_status_of_nothing_running_needs_action(tmp_path, capsys):
    assert main(["runtime", "status", "--state-dir", str(tmp_path), "--json"]) == (
        EXIT_NEEDS_ACTION
    )
    assert '"running": false' in capsys.readouterr().out


def test_prefect_yaml_deployments_load_real_flows():
    specs = load_deployments()
    names = {s["name"] for s in specs}
    assert {"nightly-backup", "nightly-prune", "weekly-restore-drill"} <= names
    for spec in specs:
        flow = load_flow(spec["entrypoint"])
        assert hasattr(flow, "to_deployment")
        for key in spec.get("parameters") or {}:
            assert key in flow.parameters.properties, (spec["name"], key)
    # The schedules operators rely on, exactly; and no schedule at all on the destructive ones.
    by_name = {s["name"]: s for s in specs}
    schedules = {
        name: [(s["cron"], s["timezone"], s["active"]) for s in spec.get("schedules") or []]
        for name, spec in by_name.items()
    }
    assert {name: crons for name, crons in schedules.items() if crons} == SCHEDULES
    assert schedules["upgrade"] == schedules["rollback"] == []
    # Upgrade and rollback pause for an operator's approval when triggered as deployments.
    for name in ("upgrade", "rollback"):
        assert by_name[name]["parameters"]["approval"] is True, name

    built = {d.name: d for d in build_runner_deployments()}
    assert set(built) == set(by_name)
    for name, expected in SCHEDULES.items():
        assert [
            (s.schedule.cron, s.schedule.timezone, s.active) for s in built[name].schedules
        ] == expected, name
    for name in ("upgrade", "rollback"):
        assert not built[name].schedules
        assert built[name].parameters["approval"] is True, name
    # A destructive deployment has no stale default version: whoever triggers it names one.
    for name in ("upgrade", "rehearse-upgrade", "fleet-upgrade"):
        assert "to_version" not in (by_name[name].get("parameters") or {}), name
        assert "to_version" not in built[name].parameters, name
        assert built[name].enforce_parameter_schema, name
        assert "to_version" in load_flow(by_name[name]["entrypoint"]).parameters.required, name


def test_serve_list_shows_every_schedule(capsys):
    assert main(["serve", "--list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {
        name: (row["schedule"], row["timezone"]) for name, row in listed.items() if row["schedule"]
    } == {name: (cron, tz) for name, [(cron, tz, _)] in SCHEDULES.items()}
    assert listed["upgrade"]["flow"] == "letta_ops.flows.upgrade:upgrade"
    assert listed["upgrade"]["schedule"] == listed["rollback"]["schedule"] == ""


def test_json_failures_are_printed_on_stdout_with_the_exit_code(capsys, monkeypatch):
    import json as json_module

    from letta_ops.cli.main import main
    from letta_ops.tasks.errors import EXIT_BAD_INPUT

    monkeypatch.setenv("LETTA_PG_URI", "postgresql://user:pass@host:5432/dbname")
    monkeypatch.delenv("LETTA_OPS_STORE", raising=False)
    code = main(["runtime", "migrate", "--version", "0.16.2", "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    failure = json_module.loads(out)
    assert failure["exit_code"] == EXIT_BAD_INPUT and "placeholder" in failure["error"]
    assert err.strip() == f"letta-ops: error: {failure['error']}"


def test_help_imports_neither_prefect_nor_sqlalchemy():
    """--help answers at once: building the parser loads no heavy library."""
    import subprocess
    import sys

    probe = (
        "import sys; from letta_ops.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('prefect', 'sqlalchemy', 'boto3', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_command_leaves_after_its_threads_exit_handlers_and_output(tmp_path):
    """``letta-ops`` skips only the interpreter's teardown (issue #32): its exit code is the
    command's, a non-daemon thread still finishes, every ``atexit`` handler still runs (the
    temporary Prefect server is stopped by one), and unflushed output is still written."""
    import subprocess
    import sys

    probe = f"""
import atexit, threading, time
from pathlib import Path
from letta_ops.cli.main import leave
done = Path({str(tmp_path)!r})
def late_thread():
    time.sleep(0.3)
    (done / "thread").write_text("finished")
threading.Thread(target=late_thread).start()
atexit.register(lambda: (done / "atexit").write_text("ran"))
print("unflushed output", end="")
leave(3)
print("never")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "unflushed output"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_command_and_python_m_exit_with_mains_code(monkeypatch, tmp_path):
    """Both ways of running the command end through ``leave`` with ``main``'s exit code: a
    missing store is refused in one sentence, exit 2, before any Prefect run."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("LETTA_OPS_STORE", raising=False)
    monkeypatch.setenv("LETTA_BASE_URL", "http://127.0.0.1:9")
    command = Path(sys.executable).with_name("letta-ops")
    for argv in ([str(command)], [sys.executable, "-m", "letta_ops.cli"]):
        out = subprocess.run(
            [*argv, "backups", "list"], capture_output=True, text=True, cwd=tmp_path, check=False
        )
        assert out.returncode == EXIT_BAD_INPUT, out.stderr
        assert out.stderr.startswith("letta-ops: error: ") and "store" in out.stderr


@pytest.mark.parametrize(
    "error,code",
    [
        ("Refused", 2),
        ("Failed", 1),
        ("Busy", 11),
        ("NeedsAction", 3),
        ("ValueError", 1),  # not a refusal: something ran and broke
        ("RuntimeError", 1),
    ],
)
def test_each_kind_of_error_has_its_exit_code(error, code, monkeypatch, capsys):
    import builtins
    import json as json_module

    from letta_ops.cli import main as cli
    from letta_ops.cli import runtime
    from letta_ops.tasks import errors

    kind = getattr(errors, error, None) or getattr(builtins, error)

    def command(args):
        raise kind(f"one sentence about {error}")

    monkeypatch.setattr(runtime, "cmd_runtime_status", command)
    assert cli.main(["runtime", "status", "--json"]) == code
    out, err = capsys.readouterr()
    assert json_module.loads(out) == {"error": f"one sentence about {error}", "exit_code": code}
    assert err.strip() == f"letta-ops: error: one sentence about {error}"


def test_a_busy_server_is_exit_11_naming_the_holder():
    from letta_ops.tasks.errors import EXIT_BUSY
    from letta_ops.tasks.runs.lock import ServerBusy

    assert ServerBusy("held").exit_code == EXIT_BUSY == 11


def test_unreachable_store_is_one_sentence_without_the_urls_credential(monkeypatch, capsys):
    """A real S3 client against a loopback port nothing listens on: botocore's own text ends in
    the whole endpoint URL (user-info included); the operator gets which store, what happened
    and what to do, without it."""
    with socket.socket() as probe:  # a port that was free a moment ago, closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://ops:s3cr3t-pw@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["backups", "list", "--store", "s3://letta-backups/prod"]) == EXIT_FAILED
    line = _one_error_line(capsys)
    assert f"backup store at http://127.0.0.1:{port} did not answer" in line
    assert "run the command again" in line
    assert "s3cr3t-pw" not in line and "@127.0.0.1" not in line
