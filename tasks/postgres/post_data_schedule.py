"""Which indexes and constraints a streamed restore may build while later tables still load.

Why: ``pg_restore -j N`` from a file builds a table's indexes as soon as its rows are in,
while other tables are still being copied; a restore that reads its dump from a stream gets
the rows one table after another, and building every index only after the last row would
add the whole index time to the restore. A table's own indexes and its primary key, unique,
check and exclusion constraints need only that table's rows, so they can start the moment
pg_restore moves on to the next table. Everything else in the post-data section (foreign
keys, triggers, indexes of partitioned tables, statistics) waits for the end, as before.

Pure functions over ``pg_restore`` outputs: the post-data TOC lines (``pg_restore --list
--section=post-data``) and the post-data script (``pg_restore --section=post-data -f -``),
which list the same entries in the same order. Anything that does not pair up cleanly makes
the schedule empty, and the restore builds everything at the end.
"""

from __future__ import annotations

import re

_HEADER = re.compile(
    r"^-- Name: (?P<name>.*); Type: (?P<type>[^;]+); Schema: (?P<schema>[^;]*);", re.M
)
_INDEX = re.compile(r"^CREATE (?:UNIQUE )?INDEX \S+ ON (?!ONLY )(?P<table>\S+) ", re.M)
_CONSTRAINT = re.compile(
    r"^ALTER TABLE ONLY (?P<table>\S+)\s+ADD CONSTRAINT \S+ "
    r"(?:PRIMARY KEY|UNIQUE|CHECK|EXCLUDE)\b",
    re.M,
)
_DATA_STARTS = re.compile(r'processing data for table "(?P<table>[^"]+)"')


def plain_name(identifier: str) -> str:
    """``public."Weird"`` -> ``public.Weird``: how pg_restore's progress lines name a table."""
    return identifier.replace('"', "")


def post_data_by_table(post_data_toc: list[str], script: str) -> dict[str, list[str]]:
    """The post-data TOC lines that need only one table's rows, by ``schema.table``.

    ``post_data_toc`` and the script's entries must pair up one to one (same count, each
    line naming the entry's type, schema and name); otherwise nothing is scheduled early.
    """
    headers = list(_HEADER.finditer(script))
    if len(headers) != len(post_data_toc):
        return {}
    schedule: dict[str, list[str]] = {}
    for i, (line, header) in enumerate(zip(post_data_toc, headers, strict=True)):
        kind, schema, name = header["type"], header["schema"], header["name"]
        if f" {kind} {schema} {name} " not in f"{line} ":
            return {}
        end = headers[i + 1].start() if i + 1 < len(headers) else len(script)
        body = script[header.end() : end]
        found = (
            _INDEX.search(body)
            if kind == "INDEX"
            else _CONSTRAINT.search(body)
            if kind == "CONSTRAINT"
            else None
        )
        if found:
            schedule.setdefault(plain_name(found["table"]), []).append(line)
    return schedule


def data_started(progress_line: str) -> str | None:
    """The ``schema.table`` whose rows pg_restore (``--verbose``) starts loading, if any."""
    found = _DATA_STARTS.search(progress_line)
    return found["table"] if found else None
