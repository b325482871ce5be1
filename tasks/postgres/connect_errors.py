"""One sentence for a PostgreSQL connection that failed: which host and port, why, the fix.

Why: a driver says ``Can't create a connection to host 127.0.0.1 and port 5432 (timeout is None
and source_address is None).`` or ``{'S': 'FATAL', 'C': '28000', 'M': 'pg_hba.conf rejects
connection ... no encryption'}`` or ``[SSL: CERTIFICATE_VERIFY_FAILED]``. An operator needs
"the server at H:P requires TLS; set sslmode=verify-full". The classes of failure are few
(refused, timed out, TLS required, TLS not offered, certificate, password, no such database or
role); each gets its reason and fix here, and anything else keeps the driver's first line.
"""

from __future__ import annotations

import socket
import ssl

from ..errors import Failed, database_error_message


class DatabaseConnectionFailed(Failed):
    """letta-ops could not open a connection to PostgreSQL; the message says why and the fix."""


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (SQLAlchemy's ``orig``, ``__cause__``, ``__context__``), once
    each: where a driver's error code hides under its wrappers."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return seen


def _server_code(exc: BaseException) -> str | None:
    for item in exception_chain(exc):
        for arg in getattr(item, "args", ()):
            if isinstance(arg, dict) and "C" in arg:
                return str(arg["C"])
    return None


def connection_failure(exc: BaseException, host: str, port: int, tls_phrase: str) -> str:
    """The sentence for ``exc``, raised while connecting to ``host:port`` with the TLS
    settings described by ``tls_phrase`` (e.g. "sslmode=verify-full (CA /x/ca.crt)")."""
    where = f"Cannot connect to PostgreSQL at {host}:{port}"
    chain = exception_chain(exc)
    text = " ".join(str(item) for item in chain)
    code = _server_code(exc)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None:
        reason = cert.verify_message or str(cert)
        return (
            f"{where}: the server's certificate was not accepted ({reason}) with {tls_phrase}; "
            "fix: set sslrootcert to the CA that signed the server's certificate and use the "
            "host name the certificate was issued for."
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        first = next(e for e in chain if isinstance(e, ssl.SSLError))
        return (
            f"{where}: the TLS handshake failed ({first.reason or first}) with {tls_phrase}; "
            "fix: check sslcert/sslkey and that the server's TLS is configured."
        )
    if "Server refuses SSL" in text:
        return (
            f"{where}: the server does not offer TLS but {tls_phrase} requires it; fix: "
            "enable ssl on the server, or connect with sslmode=disable only on a trusted "
            "network."
        )
    if code == "28000" and "no encryption" in text:
        return (
            f"{where}: the server requires TLS (pg_hba.conf rejects plaintext) and "
            f"{tls_phrase} does not encrypt; fix: set sslmode=verify-full and sslrootcert "
            "to the server's CA in the URI (or PGSSLMODE/PGSSLROOTCERT)."
        )
    if code == "28P01":
        return (
            f"{where}: password authentication failed ({database_error_message(exc)}); fix: "
            "check the user and password in the URI (or PGPASSWORD)."
        )
    if code in ("3D000", "28000"):
        return f"{where}: {database_error_message(exc)}; fix: check the role and database name."
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return (
            f"{where}: connection refused; fix: check the host and port and that PostgreSQL "
            "listens there."
        )
    if any(isinstance(e, (socket.timeout, TimeoutError)) for e in chain):
        return (
            f"{where}: no answer within connect_timeout; fix: check the host, port and "
            "firewall, or raise connect_timeout."
        )
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"{where}: the host name does not resolve; fix: check the host in the URI."
    return f"{where}: {database_error_message(exc)}."


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` happened before a session existed (not a failing statement)."""
    for item in exception_chain(exc):
        if isinstance(item, (OSError, ssl.SSLError)):
            return True
        name = type(item).__name__
        if name == "InterfaceError":
            return True
    code = _server_code(exc)
    return code is not None and (code.startswith("28") or code in ("3D000", "08001", "08006"))
