"""Process-runtime behaviour that needs no Letta install."""

from pathlib import Path

import pytest

from letta_ops.tasks.letta.versions import UnsupportedLettaVersion
from letta_ops.tasks.runtimes.install import (
    MigrationsUnavailable,
    installed_runtime,
    redact,
    runtime_root,
)
from letta_ops.tasks.runtimes.process import (
    migrations_dir,
    read_env_file,
    server_environment,
    start_server,
)


def test_env_file_and_explicit_variables_reach_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-letta")
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# operator's file\nOPENAI_API_KEY='sk-test-123'\nexport LETTA_DEBUG=true\n"
        "EMPTY=\nCOMMENTED=yes # trailing\n"
    )
    env = server_environment(
        "postgresql://a:b@127.0.0.1:5432/l", tmp_path / "home", env_file, {"X_EXTRA": "1"}
    )
    assert env["OPENAI_API_KEY"] == "sk-test-123"
    assert env["LETTA_DEBUG"] == "true"
    assert env["COMMENTED"] == "yes"
    assert env["X_EXTRA"] == "1"
    assert env["LETTA_PG_URI"] == "postgresql://a:b@127.0.0.1:5432/l"
    assert env["HOME"] == str(tmp_path / "home")
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_env_file_cannot_override_the_database():
    env = server_environment(
        "postgresql://a:b@h:1/d", Path("/tmp"), None, {"LETTA_PG_URI": "postgresql://x:y@z:1/w"}
    )
    assert env["LETTA_PG_URI"] == "postgresql://a:b@h:1/d"


def test_read_env_file_handles_quotes(tmp_path):
    path = tmp_path / "e"
    path.write_text('A="x y"\nB=plain\n\n#C=1\n')
    assert read_env_file(path) == {"A": "x y", "B": "plain"}


def test_redact_removes_every_secret():
    assert redact("uri postgresql://u:pw1234@h/d key sk-999999", ("pw1234", "sk-999999")) == (
        "uri postgresql://u:***@h/d key ***"
    )


@pytest.mark.parametrize("version", ["latest", "0.34.0"])
def test_start_refuses_unpinned_and_other_products(tmp_path, version):
    with pytest.raises(UnsupportedLettaVersion):
        start_server(version, "postgresql://a:b@127.0.0.1:1/d", tmp_path, cache_dir=tmp_path)


def test_missing_migrations_name_the_versions_that_work(tmp_path):
    from letta_ops.tasks.runtimes.install import InstalledRuntime

    runtime = InstalledRuntime("0.11.3", tmp_path, tmp_path / "v", tmp_path / "s", False, True)
    with pytest.raises(MigrationsUnavailable) as err:
        migrations_dir(runtime, None, tmp_path)
    assert "0.16.2" in str(err.value) and "--source-tree" in str(err.value)
    with pytest.raises(MigrationsUnavailable, match="not a Letta source tree"):
        migrations_dir(runtime, str(tmp_path), tmp_path)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "alembic.ini").write_text("[alembic]\n")
    assert migrations_dir(runtime, str(tree), tmp_path) == tree


def test_half_built_install_is_not_reused(tmp_path):
    (runtime_root(tmp_path, "0.16.2") / "venv").mkdir(parents=True)
    assert installed_runtime("0.16.2", tmp_path) is None
