"""Keep secrets out of the audit history.

Why a module of its own: an audit record is kept for months, copied to object storage and
shown to anyone who runs ``letta-ops history``; a password that reaches it once is leaked for
good. Every record therefore passes through :func:`redact_value` before it is written, with
three independent guards:

* keys that name a secret (``password``, ``api_key``, ``token``, ``secret``...) are dropped;
* credentials inside strings are cut out: ``scheme://user:PASSWORD@host`` loses the password,
  ``password=...`` / ``Bearer ...`` lose their value;
* known secret values (the environment's ``LETTA_API_KEY``, the password inside
  ``LETTA_PG_URI``, ``AWS_SECRET_ACCESS_KEY``..., plus any the flow registers) are replaced
  wherever they appear, e.g. inside an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlparse

MASK = "***"

_SECRET_KEY = re.compile(
    r"(passw(or)?d|passphrase|(^|_)pwd$|api[_-]?key|apikey|token|secret|credential|"
    r"private[_-]?key|encryption[_-]?key|(^|_)auth(orization)?$|cookie|session[_-]?key)",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://user@host (the user and host stay useful).
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^@\s]*@")
# password=..., api_key: ..., token=... inside free text, DSNs and query strings.
_ASSIGNED_SECRET = re.compile(
    r"(?P<key>\b[\w-]*(?:password|passwd|pwd|api[_-]?key|token|secret)[\w-]*\b)"
    r"(?P<sep>\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^\s&'\",;]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Environment variables that look like secrets by name but are not (PWD is the cwd).
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})
# Values shorter than this are not replaced verbatim: "pw" would mangle every word with "pw".
_MIN_SECRET_LENGTH = 4


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (its value is dropped, not masked)."""
    return bool(_SECRET_KEY.search(str(key)))


def secrets_from_environment(environ: Mapping[str, str] | None = None) -> set[str]:
    """Secret values the current process knows: env vars named like secrets, URI passwords."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if (
            is_secret_key(name)
            and name.upper() not in _NOT_SECRET_NAMES
            and not name.upper().endswith("_ID")
        ):
            found.add(value)
        if "://" in value:
            found.update(uri_passwords(value))
    return {s for s in found if len(s) >= _MIN_SECRET_LENGTH}


def uri_passwords(text: str) -> set[str]:
    """The passwords of every ``scheme://user:password@host`` URI inside ``text``."""
    found = set()
    for match in re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", text):
        try:
            password = urlparse(match.group(0)).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    return found


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without known secret values, URI passwords or ``password=...`` values."""
    for secret in sorted((s for s in secrets if len(s) >= _MIN_SECRET_LENGTH), key=len)[::-1]:
        text = text.replace(secret, MASK)
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + "@", text)
    text = _ASSIGNED_SECRET.sub(
        lambda m: f"{m.group('key')}{m.group('sep')}{m.group('quote')}{MASK}", text
    )
    return _BEARER.sub(lambda m: m.group("scheme") + MASK, text)


def redact_value(value: Any, secrets: Iterable[str] = (), drop_keys: bool = True) -> Any:
    """A JSON-like value with secret keys dropped and every string passed through redaction.

    ``drop_keys=False`` keeps keys that merely look like secrets (a table called ``tokens`` in
    a row count), still redacting every string value.
    """
    secrets = tuple(secrets)
    if isinstance(value, Mapping):
        return {
            str(k): redact_value(v, secrets, drop_keys)
            for k, v in value.items()
            if not (drop_keys and is_secret_key(k))
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, secrets, drop_keys) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    if value is None or isinstance(value, bool | int | float):
        return value
    secret_value = getattr(value, "get_secret_value", None)
    if callable(secret_value):  # a pydantic SecretStr: never its content
        return MASK
    return redact_text(str(value), secrets)
