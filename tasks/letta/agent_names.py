"""Letta's agent-name rules per version, and deterministic renames that satisfy them.

Why: only agent *create* validates names, so real databases hold names (``AI/ML Expert``) that
the server then refuses to export or import. An upgrade must bring every agent across, so
names that break the rule of the versions involved are renamed before export, with the
mapping old -> new in the report and the audit record. Renames are deterministic (same input,
same output) and never collide with another agent's name.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .versions import LettaVersion, parse_server_version

#: letta <= 0.12: ASCII letters, digits, space, underscore, hyphen.
ASCII_RULE = re.compile(r"^[A-Za-z0-9 _-]+$")
#: letta >= 0.13: Unicode word characters, space, apostrophe, hyphen.
UNICODE_RULE = re.compile(r"^[\w '\-]+$")
MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class NameRule:
    name: str
    pattern: re.Pattern[str]

    def accepts(self, name: str) -> bool:
        return bool(self.pattern.match(name))


ASCII = NameRule("ascii (letta <= 0.12)", ASCII_RULE)
UNICODE = NameRule("unicode (letta >= 0.13)", UNICODE_RULE)


def name_rule_for(version: str) -> NameRule:
    return ASCII if parse_server_version(version) < LettaVersion("0.13.0") else UNICODE


def strictest_rule(*versions: str) -> NameRule:
    """The rule a name must satisfy to be exported by one version and imported by another."""
    return ASCII if any(name_rule_for(v) is ASCII for v in versions) else UNICODE


def sanitize_ascii(name: str) -> str:
    """``Café Ñandú`` -> ``Cafe Nandu``; ``AI/ML Expert`` -> ``AI-ML Expert``."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return _tidy(re.sub(r"[^A-Za-z0-9 _-]", "-", folded))


def sanitize_unicode(name: str) -> str:
    """``AI/ML Expert`` -> ``AI-ML Expert``; ``Café Ñandú`` stays as it is."""
    return _tidy(re.sub(r"[^\w '\-]", "-", unicodedata.normalize("NFC", name)))


def _tidy(name: str) -> str:
    name = re.sub(r"-{2,}", "-", name)
    name = re.sub(r"\s{2,}", " ", name).strip(" -'")
    return (name or "agent")[:MAX_NAME_LENGTH].rstrip(" -'") or "agent"


def sanitize_agent_name(name: str, rule: NameRule) -> str:
    """The name unchanged when the rule accepts it, else its sanitized form for that rule."""
    if rule.accepts(name):
        return name
    return sanitize_ascii(name) if rule is ASCII else sanitize_unicode(name)


def plan_renames(agents: list[dict], rule: NameRule) -> dict[str, dict[str, str]]:
    """``{agent_id: {"old": name, "new": name}}`` for every agent the rule refuses.

    Agents are processed in id order so the plan is the same on every run; a sanitized name
    that collides with any other agent's name (kept or already renamed) gets ``-2``, ``-3``...
    """
    taken = {a["name"] for a in agents if rule.accepts(a["name"])}
    renames: dict[str, dict[str, str]] = {}
    for agent in sorted(agents, key=lambda a: a["id"]):
        if rule.accepts(agent["name"]):
            continue
        base = sanitize_agent_name(agent["name"], rule)
        candidate, n = base, 2
        while candidate in taken:
            suffix = f"-{n}"
            candidate = base[: MAX_NAME_LENGTH - len(suffix)] + suffix
            n += 1
        taken.add(candidate)
        renames[agent["id"]] = {"old": agent["name"], "new": candidate}
    return renames


def unique_name(candidate: str, taken: set[str]) -> str:
    """``candidate``, or ``candidate-2``, ``-3``... : the first not in ``taken``."""
    name, n = candidate, 2
    while name in taken:
        tail = f"-{n}"
        name = candidate[: MAX_NAME_LENGTH - len(tail)] + tail
        n += 1
    return name
