"""Which Letta server versions letta-ops can run, and what we know about each.

Why a module of its own: a wrong version string is the root of the incidents letta-ops exists
for (a ``latest`` tag that moved a server across a schema break; ``letta`` >= 0.32 being a
different product altogether). Every runtime refuses a bad version here, before it touches
anything, with one sentence that says what to do instead.
"""

from __future__ import annotations

import re
from functools import total_ordering

from ..errors import Refused

#: The last release of the Letta *server*; the repository was archived after it.
LAST_SERVER_RELEASE = "0.16.8"
#: From here on, the ``letta`` package on PyPI is Letta Code, not the server.
FIRST_NON_SERVER_RELEASE = "0.32.0"

#: Alembic head revision of each release whose schema we have checked.
ALEMBIC_HEADS: dict[str, str] = {
    "0.11.3": "5fb8bba2c373",
    "0.11.7": "ddb69be34a72",
    "0.14.0": "b1c2d3e4f5a6",
    "0.16.2": "27de0f58e076",
    "0.16.8": "1c28e167b74f",
}


def release_at_revision(revision: str | None) -> str | None:
    """The release whose alembic head ``revision`` is (None for an unknown revision)."""
    return next((v for v, head in ALEMBIC_HEADS.items() if head == revision), None)


#: Releases whose sdist carries ``alembic.ini``, ``alembic/`` and ``uv.lock``.
SDIST_WITH_MIGRATIONS = ("0.11.7", "0.14.0", "0.15.1", "0.16.2", "0.16.8")

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class UnsupportedLettaVersion(Refused):
    """A version string letta-ops will not install or run."""


@total_ordering
class LettaVersion:
    """An exact ``X.Y.Z`` Letta server release."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = tuple(int(p) for p in text.split("."))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LettaVersion) and self.parts == other.parts

    def __lt__(self, other: LettaVersion) -> bool:
        return self.parts < other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"LettaVersion({self.text!r})"


def parse_server_version(text: str) -> LettaVersion:
    """Accept only an exact Letta *server* release (``0.16.2``), refuse everything else.

    Raises :class:`UnsupportedLettaVersion` with one sentence naming the fix.
    """
    raw = (text or "").strip()
    cleaned = raw.removeprefix("v")
    if cleaned.lower() in {"latest", "", "nightly", "main", "stable"}:
        raise UnsupportedLettaVersion(
            f"Letta version {raw!r} is not a pinned release; give an exact server version such "
            f"as 0.16.2 (the last server release is {LAST_SERVER_RELEASE})."
        )
    if not _VERSION.match(cleaned):
        raise UnsupportedLettaVersion(
            f"Letta version {raw!r} is not of the form X.Y.Z; give an exact server version "
            f"such as 0.16.2."
        )
    version = LettaVersion(cleaned)
    if version >= LettaVersion(FIRST_NON_SERVER_RELEASE):
        raise UnsupportedLettaVersion(
            f"letta {cleaned} is Letta Code, a different product, not the Letta server; pick a "
            f"server release <= {LAST_SERVER_RELEASE}."
        )
    if version > LettaVersion(LAST_SERVER_RELEASE):
        raise UnsupportedLettaVersion(
            f"letta {cleaned} is not a Letta server release (the last one is "
            f"{LAST_SERVER_RELEASE}); pick a server release <= {LAST_SERVER_RELEASE}."
        )
    return version
