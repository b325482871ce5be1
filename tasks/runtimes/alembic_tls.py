"""Run a Letta version's alembic with libpq's TLS settings, which its pg8000 cannot read.

Why: Letta 0.14+ run their migrations through pg8000 (``letta.database_utils`` rewrites
``LETTA_PG_URI`` to ``postgresql+pg8000://`` and keeps ``sslmode=``), and pg8000 refuses
``sslmode`` as a keyword and knows TLS only as an ``ssl.SSLContext``. So a migration against a
TLS-only database (every managed PostgreSQL) would fail with ``connect() got an unexpected
keyword argument 'sslmode'``. letta-ops runs alembic through the small program below, in the
version's own venv: it gives pg8000 the context libpq would build from ``sslmode`` and the
``PGSSLROOTCERT``/``PGSSLCERT``/``PGSSLKEY`` variables, then hands over to alembic's own
``main``. Nothing else changes; 0.11.x (psycopg, libpq itself) reads the same settings natively.
"""

from __future__ import annotations

#: ``python -c`` program: alembic's command line, with pg8000 taught libpq's TLS modes.
ALEMBIC_WITH_LIBPQ_TLS = r"""
import os, ssl, sys

try:
    import pg8000
except ImportError:
    pg8000 = None

if pg8000 is not None:
    _connect = pg8000.connect

    def _libpq_tls_connect(*args, sslmode=None, **kwargs):
        mode = sslmode or os.environ.get("PGSSLMODE") or "prefer"
        root = os.environ.get("PGSSLROOTCERT")
        if "ssl_context" not in kwargs:
            if mode == "disable":
                kwargs["ssl_context"] = False
            elif mode in ("require", "verify-ca", "verify-full"):
                context = ssl.create_default_context()
                if mode == "require" and not root:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                else:
                    context.check_hostname = mode == "verify-full"
                    if root and root != "system":
                        context.load_verify_locations(cafile=root)
                if os.environ.get("PGSSLCERT"):
                    context.load_cert_chain(os.environ["PGSSLCERT"], os.environ.get("PGSSLKEY"))
                kwargs["ssl_context"] = context
        return _connect(*args, **kwargs)

    pg8000.connect = _libpq_tls_connect

from alembic.config import main

sys.exit(main(argv=sys.argv[1:], prog="alembic"))
"""
