"""Which servers a fleet run touches, and in which waves: pure decisions.

Why pure: a fleet run's selection and waves must be the same when planned (``--dry-run``) and
when run, and an operator must be able to predict them from the inventory alone. The inventory
is the saved Letta Server blocks, each with its tags (``env:prod``, ``team:search``).

A selector is a comma-separated list of terms; a server is selected when any term matches it:
``key:value`` matches a tag (the value may be a glob: ``team:*``), anything else is a glob on
the server's name (``prod-*``, ``billing``). ``*`` selects every server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from ..errors import Refused


class SelectionRefused(Refused):
    """The selector is malformed or matches no server; the message lists what exists."""


@dataclass(frozen=True)
class ServerEntry:
    """One server of the inventory: its block name, tags and URL."""

    name: str
    tags: tuple[str, ...] = field(default_factory=tuple)
    base_url: str = ""


def _matches(entry: ServerEntry, term: str) -> bool:
    if ":" in term:
        return any(fnmatchcase(tag, term) for tag in entry.tags)
    return fnmatchcase(entry.name, term)


def parse_selector(selector: str) -> list[str]:
    terms = [t.strip() for t in (selector or "").split(",") if t.strip()]
    if not terms:
        raise SelectionRefused(
            "The server selector is empty; pass names, globs or tags, e.g. --servers 'env:prod' "
            "or --servers 'prod-*,billing' ('*' for every server)."
        )
    return terms


def select_servers(inventory: list[ServerEntry], selector: str) -> list[ServerEntry]:
    """The servers ``selector`` matches, in name order; refused when it matches none."""
    terms = parse_selector(selector)
    chosen = sorted(
        (e for e in inventory if any(_matches(e, t) for t in terms)), key=lambda e: e.name
    )
    if not chosen:
        known = ", ".join(
            f"{e.name} [{' '.join(e.tags)}]" if e.tags else e.name
            for e in sorted(inventory, key=lambda e: e.name)
        )
        raise SelectionRefused(
            f"No saved server matches {selector!r}; saved servers: {known or 'none'} "
            "(save Letta Server blocks with tags, see README 'Fleets')."
        )
    return chosen


def plan_waves(names: list[str], wave_size: int, canary: str | None = None) -> list[list[str]]:
    """A canary wave of one, then waves of ``wave_size`` in name order.

    The canary is ``canary`` when given (it must be selected), else the first name.
    """
    if wave_size < 1:
        raise SelectionRefused(f"--wave-size must be at least 1, not {wave_size}.")
    if not names:
        return []
    if canary is None:
        canary = names[0]
    if canary not in names:
        raise SelectionRefused(
            f"The canary {canary!r} is not among the selected servers ({', '.join(names)})."
        )
    rest = [n for n in names if n != canary]
    return [[canary]] + [rest[i : i + wave_size] for i in range(0, len(rest), wave_size)]
