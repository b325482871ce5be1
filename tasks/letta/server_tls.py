"""Whether a Letta server can use the database's TLS settings: the pre-flight's sentence.

Why: a server letta-ops starts gets ``LETTA_PG_URI`` with ``sslmode`` and the ``PGSSLROOTCERT``/
``PGSSLCERT``/``PGSSLKEY`` variables (:meth:`PostgresDatabase.letta_pg_uri`). Checked in the
released sources of 0.11.7, 0.14.0 and 0.16.2: each turns ``sslmode=`` into asyncpg's ``ssl=``
(0.11.7's synchronous engine is psycopg, libpq itself), and asyncpg reads the files from those
variables; 0.14+ migrate through pg8000, which letta-ops' alembic launcher teaches the same
modes (:mod:`letta_ops.tasks.runtimes.alembic_tls`). What no version can take is a passphrase for an
encrypted client key: libpq has no variable for it and Letta passes every URI parameter other
than ``sslmode`` to asyncpg as a keyword it refuses. Said before anything stops.
"""

from __future__ import annotations

from ..errors import Refused
from ..postgres.database import PostgresDatabase


class ServerTlsUnsupported(Refused):
    """The Letta server cannot connect with these TLS settings; nothing was changed."""


def require_server_can_use_tls(database: PostgresDatabase, version: str) -> None:
    """Refuse, in one sentence, TLS settings Letta ``version`` cannot be given."""
    tls = database.server_tls()
    if tls.password is not None:
        raise ServerTlsUnsupported(
            f"Letta {version} cannot use an encrypted client key (sslpassword): it hands URI "
            "parameters other than sslmode to asyncpg, which refuses them, and libpq has no "
            "variable for it; give the server an unencrypted key file (openssl pkey -in "
            "client.key -out client-plain.key, mode 0600) or password authentication."
        )
