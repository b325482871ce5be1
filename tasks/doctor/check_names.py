"""The names of ``letta-ops doctor``'s checks, in report order.

Its own module, free of imports, because the command line builds ``--ignore``'s choices from
it: ``letta-ops --help`` must not import Prefect or SQLAlchemy to print them.
"""

CHECK_NAMES = (
    "health",
    "server-auth",
    "runtime",
    "alembic",
    "pgvector",
    "pg-tools",
    "database-tls",
    "restore-privileges",
    "interrupted-run",
    "agent-names",
    "database-uri",
    "sqlite-file",
    "sqlite-wal",
    "sqlite-version",
    "home-writable",
    "sequences",
    "encryption-key",
    "compose-pin",
    "dump-space",
    "backup-age",
    "backup-lock",
    "backup-delete",
    "backup-encryption",
    "backup-authentication",
)
