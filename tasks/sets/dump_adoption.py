"""What a ``pg_dump`` letta-ops did not take holds: checked before it may become a backup set.

Why: operators arrive with a dump taken by hand (``docker exec letta_db pg_dump -Fc ...``)
before an upgrade went wrong. To roll back to it, or restore it, it must become a set like any
other: a manifest that says which Letta version and alembic revision it holds and how many rows
each table has. None of that can be taken from the operator's word: the archive's table of
contents (``pg_restore --list``) must show Letta's tables in this server's schema, and the
version and counts come from restoring it once into a scratch database (the drill's own
scratch database: created beside Letta's, or ``LETTA_OPS_DRILL_PG_URI``), which is dropped
again. A file that is not a custom-format archive, a dump of another application or another
schema, or a revision no known Letta release has, is refused in one sentence and nothing is
stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Refused
from ..letta.versions import release_at_revision
from ..postgres.client_tools import client_tools
from ..postgres.database import PostgresDatabase
from ..postgres.letta_inventory import agent_inventory
from ..postgres.letta_schema import alembic_revision, table_row_counts
from ..postgres.restore import restore_dump
from .verification import scratch_database

#: Tables every Letta schema has, from 0.11 on: a dump without them is not a Letta database.
LETTA_MARKER_TABLES = ("agents", "messages", "alembic_version")
_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (\S+) (\S+) ")
_HEADER = re.compile(r"^;\s+(Dumped from database version|Format|Compression):\s+(.+)$")


class DumpRefused(Refused):
    """The file cannot be adopted as a set of this server; nothing was stored."""


@dataclass(frozen=True)
class DumpContents:
    """What the archive's table of contents says, before anything is restored."""

    schema: str
    tables: list[str]
    postgres_version: str
    compression: str | None
    toc_entries: int


@dataclass(frozen=True)
class AdoptedDump:
    """What restoring the dump once showed: the facts a manifest records."""

    contents: DumpContents
    alembic_revision: str
    letta_version: str
    row_counts: dict[str, int]
    agents: dict[str, dict] = field(default_factory=dict)  # id -> name, messages, blocks
    restore_warnings: list[str] = field(default_factory=list)


def read_contents(database: PostgresDatabase, path: Path) -> DumpContents:
    """``pg_restore --list`` of the file: refused unless it is a custom-format archive that
    holds Letta's tables in ``database``'s schema."""
    if not path.is_file():
        raise DumpRefused(f"{path} is not a file.")
    tools = client_tools(database)
    with tools.staged(path) as staged:
        listed = tools.run("pg_restore", "--list", staged)
    if listed.returncode != 0:
        why = (listed.stderr.strip().splitlines() or ["unreadable"])[-1]
        raise DumpRefused(
            f"{path} is not a custom-format pg_dump archive ({why.removeprefix('pg_restore: ')}); "
            "take one with 'pg_dump --format=custom'."
        )
    lines = listed.stdout.splitlines()
    header = {m.group(1): m.group(2).strip() for line in lines if (m := _HEADER.match(line))}
    by_schema: dict[str, list[str]] = {}
    for line in lines:
        if found := _TABLE.match(line):
            by_schema.setdefault(found.group(1), []).append(found.group(2))
    letta = [s for s, tables in by_schema.items() if set(LETTA_MARKER_TABLES) <= set(tables)]
    if not letta:
        raise DumpRefused(
            f"{path} holds no Letta database: none of its schemas has Letta's tables "
            f"({', '.join(LETTA_MARKER_TABLES)})."
        )
    wanted = database.db_schema or "public"
    if wanted not in letta:
        raise DumpRefused(
            f"{path} holds Letta's tables in schema {letta[0]!r}, but this server's are in "
            f"{wanted!r}; adopt it on a server whose LETTA_PG_SCHEMA is {letta[0]!r}."
        )
    return DumpContents(
        schema=wanted,
        tables=sorted(by_schema[wanted]),
        postgres_version=header.get("Dumped from database version", "unknown"),
        compression=header.get("Compression"),
        toc_entries=sum(1 for line in lines if line and not line.startswith(";")),
    )


def inspect_in_scratch(
    database: PostgresDatabase, target: PostgresDatabase, dedicated: bool, path: Path
) -> AdoptedDump:
    """Restore the dump once into a scratch database on ``target``'s server and read its
    alembic revision, the Letta release it is the head of, per-table counts and agents."""
    contents = read_contents(database, path)
    with scratch_database(target, contents.schema, dedicated, "adopt") as (scratch, _):
        warnings = restore_dump(scratch, path)
        revision = alembic_revision(scratch)
        version = release_at_revision(revision)
        if version is None:
            raise DumpRefused(
                f"{path} holds a Letta schema at alembic revision {revision!r}, which is not "
                "the head of any Letta release letta-ops knows; it cannot say which version "
                "to start on it."
            )
        counts = table_row_counts(scratch)
        agents = agent_inventory(scratch)
    return AdoptedDump(
        contents=contents,
        alembic_revision=str(revision),
        letta_version=version,
        row_counts=counts,
        agents=agents,
        restore_warnings=warnings,
    )
