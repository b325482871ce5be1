"""The SQLite database a pip-installed Letta server keeps its state in, as the drivers take it.

Why: a Letta started without ``LETTA_PG_URI`` keeps everything in ``$HOME/.letta/sqlite.db``
(the first deployment most operators have). Letta itself fixes that place: it opens
``sqlite.db`` in the ``.letta`` directory of its ``HOME`` (its log says ``Creating sqlite
engine sqlite:////home/op/.letta/sqlite.db``). So an operator names the database the way
Letta shows it -- that URI, the file, or the ``.letta`` directory -- and letta-ops starts the
server with ``HOME`` set to the directory that holds ``.letta``. A file anywhere else is
refused with one sentence: no Letta server would open it.

Only versions before 0.12 serve SQLite (0.12+ build their engine from a PostgreSQL URI that
defaults to ``localhost:5432``); :func:`require_serves_sqlite` refuses the rest before
anything starts.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import Refused
from ..letta.versions import LettaVersion, parse_server_version

#: The directory and file name Letta opens under its ``HOME``.
LETTA_DIR_NAME = ".letta"
SQLITE_FILE_NAME = "sqlite.db"
#: The first release that no longer serves SQLite.
FIRST_VERSION_WITHOUT_SQLITE = LettaVersion("0.12.0")


class InvalidSqliteDatabase(Refused):
    """A SQLite database reference no Letta server would open; the message says the fix."""


class SqliteNotServed(Refused):
    """The Letta version asked for cannot serve a SQLite database."""


def serves_sqlite(version: str) -> bool:
    """Whether ``version`` serves ``$HOME/.letta/sqlite.db`` when no ``LETTA_PG_URI`` is set."""
    return parse_server_version(version) < FIRST_VERSION_WITHOUT_SQLITE


def require_serves_sqlite(version: str) -> None:
    """Refuse, in one sentence, a version that would not serve SQLite (it would connect to
    ``localhost:5432`` instead and exit)."""
    if not serves_sqlite(version):
        raise SqliteNotServed(
            f"Letta {parse_server_version(version)} no longer serves SQLite: move it to "
            "PostgreSQL first with `letta-ops move-to-postgres`."
        )


def sqlite_file_from_reference(reference: str) -> Path:
    """``sqlite:////abs/.letta/sqlite.db``, ``/abs/.letta/sqlite.db`` or ``/abs/.letta``
    (``~`` expanded) -> the absolute path of the ``sqlite.db`` file Letta opens."""
    text = (reference or "").strip()
    if not text:
        raise InvalidSqliteDatabase(
            "The SQLite database is empty; name Letta's file, e.g. ~/.letta/sqlite.db."
        )
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme not in ("sqlite", "sqlite+aiosqlite") or parsed.netloc:
            raise InvalidSqliteDatabase(
                "A SQLite database URI has the form sqlite:////ABSOLUTE/PATH/.letta/sqlite.db "
                "(four slashes), as Letta's log prints it."
            )
        # SQLAlchemy's form: ``sqlite:///`` then the path (absolute: a fourth slash).
        text = unquote(parsed.path)[1:]
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise InvalidSqliteDatabase(
            f"The SQLite database path {text!r} is relative; give the absolute path of "
            "Letta's file, e.g. /home/op/.letta/sqlite.db."
        )
    if path.name == LETTA_DIR_NAME:
        path = path / SQLITE_FILE_NAME
    if path.name != SQLITE_FILE_NAME or path.parent.name != LETTA_DIR_NAME:
        raise InvalidSqliteDatabase(
            f"Letta keeps its SQLite database at HOME/{LETTA_DIR_NAME}/{SQLITE_FILE_NAME} and "
            f"opens no other file; {path} is not such a path (move the file there, or name "
            "that file or its .letta directory)."
        )
    return path


class SqliteDatabase(BaseModel):
    """A Letta server's SQLite database: the ``sqlite.db`` file in a ``.letta`` directory."""

    model_config = ConfigDict(frozen=True)

    path: Path = Field(
        description="Letta's SQLite file, HOME/.letta/sqlite.db (a sqlite:////... URI or the "
        ".letta directory are accepted too).",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _resolve(cls, value: object) -> Path:
        return sqlite_file_from_reference(str(value))

    @classmethod
    def from_reference(cls, reference: str) -> SqliteDatabase:
        """Build from what an operator typed, refusing (:class:`InvalidSqliteDatabase`, not a
        validation error) a reference no Letta would open."""
        return cls(path=sqlite_file_from_reference(reference))

    @property
    def letta_dir(self) -> Path:
        """The ``.letta`` directory (Letta's config, tool directory, the file and its WAL)."""
        return self.path.parent

    @property
    def server_home(self) -> Path:
        """The ``HOME`` a Letta server must run with to open exactly this file."""
        return self.letta_dir.parent

    @property
    def uri(self) -> str:
        """The SQLAlchemy form Letta logs (``sqlite:////abs/.letta/sqlite.db``)."""
        return f"sqlite:///{self.path}"
