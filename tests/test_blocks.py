import pytest
from pydantic import ValidationError

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.blocks.letta_server import LettaServer
from letta_ops.blocks.process_runtime import LettaProcessRuntime
from letta_ops.tasks.postgres.database import InvalidDatabaseURI, parse_letta_pg_uri

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgresql+asyncpg", "postgresql+pg8000", "postgres"]
)
def test_database_accepts_letta_uri_forms(scheme):
    db = LettaDatabase(uri=f"{scheme}://letta:{SECRET}@127.0.0.1:5433/letta")
    assert db.letta_pg_uri() == f"postgresql://letta:{SECRET}@127.0.0.1:5433/letta"
    assert db.sqlalchemy_url("pg8000").startswith("postgresql+pg8000://")
    assert db.libpq_env()["PGPASSWORD"] == SECRET
    assert SECRET not in db.redacted_uri()
    assert SECRET not in repr(db)


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://user:pass@host:5432/dbname",
        "postgresql://username:password@localhost:5432/dbname",
        "postgresql://letta:x@your_host:5432/letta",
    ],
)
def test_placeholder_uris_are_refused_before_connecting(uri):
    with pytest.raises(InvalidDatabaseURI, match="placeholder"):
        parse_letta_pg_uri(uri)


def test_bad_uri_error_never_echoes_the_password():
    with pytest.raises(ValidationError) as err:
        LettaDatabase(uri=f"mysql://letta:{SECRET}@db:3306/letta")
    assert "not supported" in str(err.value)
    assert SECRET not in str(err.value)


def test_blocks_from_environment():
    env = {
        "LETTA_BASE_URL": "http://127.0.0.1:9999/v1",
        "LETTA_API_KEY": SECRET,
        "LETTA_PG_URI": f"postgresql+asyncpg://letta:{SECRET}@127.0.0.1:5432/letta",
    }
    server = LettaServer.from_env(env)
    assert server.base_url == "http://127.0.0.1:9999"
    assert server.auth_headers() == {"Authorization": f"Bearer {SECRET}"}
    assert server.server_name == "127.0.0.1-9999"
    db = LettaDatabase.from_env(env)
    assert db.database_name == "letta"
    with pytest.raises(InvalidDatabaseURI):
        LettaDatabase.from_env({"LETTA_PG_URI": "postgresql://user:pass@host:5432/dbname"})
    with pytest.raises(InvalidDatabaseURI, match="empty"):
        LettaDatabase.from_env({})


def test_server_name_is_one_safe_path_segment():
    assert LettaServer(name="../prod/eu").server_name == "prod-eu"


def test_process_runtime_secrets_stay_secret():
    runtime = LettaProcessRuntime(server_env={"OPENAI_API_KEY": SECRET})
    assert SECRET not in repr(runtime)
    assert SECRET not in runtime.model_dump_json()
