"""TLS to PostgreSQL as libpq defines it, for every connection letta-ops makes.

Why one place: managed PostgreSQL (RDS, Neon, Supabase, Render) accepts only TLS and hands out
URIs such as ``postgresql://u@h/db?sslmode=verify-full&sslrootcert=ca.crt``. libpq's tools read
those settings; pg8000 does not (``sslmode`` as a keyword raises ``TypeError``, TLS happens only
through ``ssl_context=``), and asyncpg inside Letta reads another spelling. So the settings are
parsed once -- from the URI's query, the Letta Database block's fields and the standard
``PGSSL*`` variables, in libpq's order of precedence -- into :class:`PostgresTls`, which then
speaks each client's language: an ``ssl.SSLContext`` for pg8000, ``PGSSL*`` variables for
pg_dump/pg_restore/psql (never an argument), and a URI plus variables a Letta server can use.

The modes mean what libpq says they mean: ``disable`` plaintext; ``allow``/``prefer`` try TLS
without verification and fall back to plaintext; ``require`` encrypted, never plaintext, not
verified (verified as ``verify-ca`` when a root certificate is named, as libpq does);
``verify-ca`` the server's certificate must chain to the root; ``verify-full`` that, and its name
must match the host.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import parse_qsl, urlencode, urlparse

from pydantic import SecretStr

from ..errors import Refused

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[str, ...] = get_args(SslMode)

#: libpq connection parameters letta-ops understands in a URI's query, with their variables.
#: (libpq has no variable for ``sslpassword``: it comes from the URI or the block only.)
LIBPQ_VARIABLES = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}
#: Query parameters no driver takes as a keyword; they are read here and removed from the URI
#: handed to pg8000 or asyncpg. ``pgbouncer`` is Supabase's/Prisma's marker of a pooler.
CONNECTION_QUERY_PARAMETERS = (*LIBPQ_VARIABLES, "sslpassword", "pgbouncer")

TlsState = Literal["plaintext", "encrypted unverified", "verified"]


class TlsSettingsRefused(Refused):
    """The TLS settings cannot be used as given (unknown mode, missing file); nothing ran."""


@dataclass(frozen=True)
class PostgresTls:
    """The TLS settings of one database connection, already merged from every source."""

    mode: SslMode = "prefer"
    rootcert: str | None = None
    cert: Path | None = None
    key: Path | None = None
    password: SecretStr | None = None
    connect_timeout: int | None = None
    #: Whether any source named a mode (a server letta-ops starts gets it only then).
    mode_explicit: bool = False

    @property
    def effective_mode(self) -> SslMode:
        """``require`` with a root certificate named verifies the chain, as in libpq."""
        if self.mode == "require" and self.rootcert:
            return "verify-ca"
        return self.mode

    @property
    def verifies(self) -> bool:
        return self.effective_mode in ("verify-ca", "verify-full")

    @property
    def requires_tls(self) -> bool:
        return self.mode in ("require", "verify-ca", "verify-full")

    def describe(self) -> str:
        """One phrase for plans and doctor, e.g. "sslmode=verify-full (CA /etc/ca.crt)"."""
        ca = f" (CA {self.rootcert})" if self.verifies and self.rootcert else ""
        return f"sslmode={self.effective_mode}{ca}"

    def ssl_context(self) -> ssl.SSLContext | bool | None:
        """What pg8000's ``ssl_context=`` needs: ``False`` plaintext only, ``None`` try TLS
        unverified then plaintext (``allow``/``prefer``), an ``SSLContext`` TLS or nothing."""
        if self.mode == "disable":
            return False
        if not self.requires_tls and not self.cert:
            return None
        context = ssl.create_default_context()
        if self.verifies:
            context.verify_mode = ssl.CERT_REQUIRED
            context.check_hostname = self.effective_mode == "verify-full"
            if self.rootcert == "system":
                context.load_default_certs()
            else:
                context.load_verify_locations(cafile=str(self.rootcert))
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            context.load_cert_chain(
                str(self.cert),
                str(self.key) if self.key else None,
                self.password.get_secret_value() if self.password else None,
            )
        return context

    def libpq_env(self) -> dict[str, str]:
        """The ``PGSSL*`` variables that give libpq tools (and asyncpg) these settings."""
        env = {"PGSSLMODE": self.mode}
        if self.rootcert:
            env["PGSSLROOTCERT"] = self.rootcert
        if self.cert:
            env["PGSSLCERT"] = str(self.cert)
        if self.key:
            env["PGSSLKEY"] = str(self.key)
        if self.connect_timeout:
            env["PGCONNECT_TIMEOUT"] = str(self.connect_timeout)
        return env

    def state_of(self, encrypted: bool) -> TlsState:
        """What a connection made with these settings is: doctor's three states."""
        if not encrypted:
            return "plaintext"
        return "verified" if self.verifies else "encrypted unverified"


def uri_query(uri: str) -> dict[str, str]:
    return dict(parse_qsl(urlparse(uri.strip()).query, keep_blank_values=True))


def without_connection_parameters(uri: str, keep: Mapping[str, str] | None = None) -> str:
    """``uri`` without the parameters read here (drivers refuse them as keywords), plus
    ``keep`` (e.g. ``sslmode`` for a Letta server)."""
    parsed = urlparse(uri.strip())
    query = [
        (k, v)
        for k, v in parse_qsl(parsed.query, keep_blank_values=True)
        if k not in CONNECTION_QUERY_PARAMETERS
    ]
    query.extend((keep or {}).items())
    return parsed._replace(query=urlencode(query)).geturl()


def tls_settings(
    uri: str,
    *,
    sslmode: str | None = None,
    sslrootcert: str | Path | None = None,
    sslcert: Path | None = None,
    sslkey: Path | None = None,
    sslpassword: SecretStr | None = None,
    environ: Mapping[str, str] | None = None,
) -> PostgresTls:
    """Merge the URI's query, the block's fields and the ``PGSSL*`` variables, in that order
    of precedence (libpq's: the connection string first, then the environment)."""
    env = os.environ if environ is None else environ
    query = uri_query(uri)
    fields = {
        "sslmode": sslmode,
        "sslrootcert": sslrootcert,
        "sslcert": sslcert,
        "sslkey": sslkey,
        "connect_timeout": None,
    }

    def pick(name: str) -> str | None:
        for value in (query.get(name), fields.get(name), env.get(LIBPQ_VARIABLES[name])):
            if value not in (None, ""):
                return str(value)
        return None

    mode = pick("sslmode")
    if mode is not None and mode not in SSL_MODES:
        raise TlsSettingsRefused(
            f"sslmode {mode!r} is not a libpq mode; use one of {', '.join(SSL_MODES)}."
        )
    rootcert = pick("sslrootcert")
    if rootcert is None and mode in ("verify-ca", "verify-full"):
        default = Path.home() / ".postgresql" / "root.crt"
        if not default.exists():
            raise TlsSettingsRefused(
                f"sslmode={mode} needs the CA that signed the server's certificate; set "
                "sslrootcert=/path/to/ca.crt in the URI (or PGSSLROOTCERT, or the block's "
                "sslrootcert), or sslrootcert=system for the system's CAs."
            )
        rootcert = str(default)
    cert, key = pick("sslcert"), pick("sslkey")
    for name, path in (("sslrootcert", rootcert), ("sslcert", cert), ("sslkey", key)):
        if path and path != "system" and not Path(path).is_file():
            raise TlsSettingsRefused(
                f"{name} {path} does not exist or is not a file; give the path of the "
                "PEM file on this host."
            )
    timeout = pick("connect_timeout")
    if timeout is not None and not timeout.isdigit():
        raise TlsSettingsRefused(
            f"connect_timeout {timeout!r} is not a whole number of seconds; use e.g. 10."
        )
    password = query.get("sslpassword")
    return PostgresTls(
        mode=mode or "prefer",  # type: ignore[arg-type]
        rootcert=rootcert,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
        password=SecretStr(password) if password else sslpassword,
        connect_timeout=int(timeout) if timeout and int(timeout) > 0 else None,
        mode_explicit=mode is not None,
    )
