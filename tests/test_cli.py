"""The command line: bad input gets one sentence and exit 2; deployments are well formed."""

from __future__ import annotations

import pytest

from flows.cli import EXIT_BAD_INPUT, EXIT_NEEDS_ACTION, main
from flows.serve import build_runner_deployments, load_deployments, load_flow


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
    backup = next(s for s in specs if s["name"] == "nightly-backup")
    assert backup["schedules"][0]["cron"] and backup["schedules"][0]["timezone"]
    built = {d.name: d for d in build_runner_deployments()}
    assert built["nightly-backup"].schedules[0].schedule.cron == backup["schedules"][0]["cron"]
