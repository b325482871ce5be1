"""``doctor``'s ``database-tls`` check: how each connection to the database is protected.

Why: a URI without ``sslmode`` works against a managed database (libpq's ``prefer`` and
pg8000's default encrypt when offered) while verifying nothing, so a man in the middle goes
unseen, and a server that offers no TLS is reached in plaintext without a word. The doctor
says, for each connection -- letta-ops' own SQL, its pg_dump/pg_restore, the Letta server's
sessions -- whether it is plaintext, encrypted but unverified, or verified, and asks for
action when a database that is not on this host is reached without verification.
"""

from __future__ import annotations

import ipaddress

import sqlalchemy as sa

from ..postgres.database import PostgresDatabase
from ..postgres.letta_schema import connect
from .findings import Finding, action, ok

CHECK = "database-tls"

_SESSIONS_SQL = """
SELECT count(*) FILTER (WHERE a.pid = pg_backend_pid() AND s.ssl) AS own_encrypted,
       count(*) FILTER (WHERE a.pid <> pg_backend_pid()) AS others,
       count(*) FILTER (WHERE a.pid <> pg_backend_pid() AND s.ssl) AS others_encrypted
FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.datname = current_database() AND a.backend_type = 'client backend'
"""


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finding(who: str, state: str, host: str, port: int, how: str) -> Finding:
    detail = f"{who} -> {host}:{port}: {state} ({how})"
    if state == "verified" or is_loopback(host):
        return ok(CHECK, detail)
    return action(
        CHECK,
        detail,
        "Set sslmode=verify-full and sslrootcert=/path/to/the-server-ca.crt in the URI (or "
        "PGSSLMODE and PGSSLROOTCERT, or the Letta Database block's fields): a database off "
        "this host is reached without checking who answers.",
    )


def check_database_tls(db: PostgresDatabase) -> list[Finding]:
    """One finding per connection: letta-ops' SQL, its pg tools, the Letta server's sessions."""
    from ..postgres.client_tools import speaks_tls

    tls = db.tls()
    p = db.parts
    host, port = str(p["host"]), int(p["port"])
    with connect(db) as conn:
        row = conn.execute(sa.text(_SESSIONS_SQL)).mappings().one()
    own = tls.state_of(bool(row["own_encrypted"]))
    findings = [_finding("letta-ops SQL (pg8000)", own, host, port, tls.describe())]

    if db.pg_tools_compose_service:
        findings.append(
            ok(
                CHECK,
                f"pg_dump/pg_restore: inside compose service {db.pg_tools_compose_service}, "
                "over the container's own socket",
            )
        )
    else:
        tools_tls = speaks_tls(db.bin_dir())
        tools_state = own if tools_tls or tls.mode == "disable" else "plaintext"
        how = tls.describe() if tools_tls else "client built without TLS"
        findings.append(_finding("pg_dump/pg_restore", tools_state, host, port, how))

    server_tls = db.server_tls()
    server_host = str(_server_parts(db)["host"])
    others, encrypted = int(row["others"]), int(row["others_encrypted"])
    if others == 0:
        findings.append(
            ok(CHECK, f"Letta server: no session on the database now ({server_tls.describe()})")
        )
    else:
        state = server_tls.state_of(encrypted == others)
        how = f"{encrypted} of {others} sessions encrypted; {server_tls.describe()}"
        findings.append(_finding("Letta server", state, server_host, port, how))
    return findings


def _server_parts(db: PostgresDatabase) -> dict[str, str | int]:
    from ..postgres.database import parse_letta_pg_uri

    return parse_letta_pg_uri(db.uri.get_secret_value())
