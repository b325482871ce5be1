"""Which entries of a dump's table of contents a restore writes: Letta's part only.

Why its own module: a restore must not recreate what is not Letta's. Sets written before
letta-ops dumped Letta's schema alone hold the whole database (other schemas' tables and
rows); and a dump of Letta's schema carries the definitions of the operator's functions and
types in it, which pg_dump cannot leave out, and which the target keeps (a reset in place
drops Letta's objects only), so recreating them would fail. The rule of what is Letta's is
:mod:`letta_ops.tasks.postgres.letta_objects`; this reads the TOC lines pg_restore ``--list`` prints
(``<id>; <oid> <oid> KIND SCHEMA TAG OWNER``).
"""

from __future__ import annotations

import re

#: TOC entry kinds of more than one word, longest first (the schema follows the kind).
_MULTIWORD_KINDS = (
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "PUBLICATION TABLE",
    "MATERIALIZED VIEW",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "SEQUENCE SET",
    "SECURITY LABEL",
    "EVENT TRIGGER",
    "INDEX ATTACH",
    "TABLE ATTACH",
    "ROW SECURITY",
    "DEFAULT ACL",
    "TABLE DATA",
)
_DEFINITIONS = ("TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE")
_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")


def toc_entry(line: str) -> tuple[str, str, str] | None:
    """A TOC line's kind, schema (``-`` for none) and the rest (tag and owner)."""
    found = _TOC_ENTRY.match(line)
    if not found:
        return None
    rest = found["rest"]
    kind = next((k for k in _MULTIWORD_KINDS if rest.startswith(k + " ")), rest.split(" ")[0])
    schema, _, tag = rest[len(kind) + 1 :].partition(" ")
    return kind, schema, tag


def outside_lettas_part(line: str, schema: str, kept: frozenset[str]) -> bool:
    """An entry of another schema than Letta's, or the definition (or its comment) of a type
    or routine the target's Letta schema keeps because it is not Letta's."""
    entry = toc_entry(line)
    if entry is None:
        return False
    kind, entry_schema, tag = entry
    if entry_schema not in ("-", schema):
        return True
    if kind in ("COMMENT", "ACL", "SECURITY LABEL"):
        kind, _, tag = tag.partition(" ")
    if kind in _DEFINITIONS:
        return re.split(r"[ (]", tag, maxsplit=1)[0] in kept
    return False
