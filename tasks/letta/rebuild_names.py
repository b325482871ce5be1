"""Agent names through a rebuild: changed to travel, given back where the target allows them.

Why: a rebuild moves agents as agent files, so a name must pass the *source's* export and the
*target's* import. From 0.11.x (ASCII rule) an agent called ``Café Ñandú`` cannot be exported
(the server answers 500), so it travels as ``Cafe Nandu``; but 0.13+ accept Unicode names, and
the operator's users know the agent as ``Café Ñandú``. Renaming for the trip is a means, not a
result: after the import every agent whose own name the target accepts gets it back, and only
the names the target itself refuses (``AI/ML Expert``) stay changed, each recorded.

Two rename maps therefore exist for one rebuild: *transit* (the strictest rule of the source and
the target: what the files carry) and *final* (the target's rule: what the agents end up as).
"""

from __future__ import annotations

from dataclasses import dataclass

from .agent_names import NameRule, name_rule_for, plan_renames, strictest_rule
from .api import LettaClient

#: ``{agent_id: {"old": name, "new": name}}``, as :func:`agent_names.plan_renames` returns.
RenameMap = dict[str, dict[str, str]]


class NamesNotGivenBack(RuntimeError):
    """An imported agent could not be found by the name it travelled under."""


@dataclass(frozen=True)
class RebuildNames:
    """The names of one upgrade: the rule they end under, the final and the transit renames."""

    rule: NameRule
    final: RenameMap
    transit: RenameMap

    def given_back(self) -> RenameMap:
        """The renames after the import: see :func:`names_to_give_back`."""
        return names_to_give_back(self.transit, self.final)


def names_to_give_back(transit: RenameMap, final: RenameMap) -> RenameMap:
    """Agent id -> ``{"old": transit name, "new": final name}`` for every agent whose name
    changed only for the trip (its final name differs from the name its file carries)."""
    back: RenameMap = {}
    for agent_id, change in transit.items():
        name = final.get(agent_id, {}).get("new", change["old"])
        if name != change["new"]:
            back[agent_id] = {"old": change["new"], "new": name}
    return back


def plan_rebuild_names(
    agents: list[dict], current: str, target: str, strategy: str
) -> RebuildNames:
    """The names of ``agents`` (dicts with ``id`` and ``name``) through an upgrade.

    A migration keeps rows as they are, so only the target's rule is reported and nothing
    travels; a rebuild's files must pass both versions' rules on the way.
    """
    rule = name_rule_for(target)
    final = plan_renames(agents, rule)
    transit = plan_renames(agents, strictest_rule(current, target)) if strategy == "rebuild" else {}
    return RebuildNames(rule=rule, final=final, transit=transit)


def give_names_back(client: LettaClient, given_back: RenameMap) -> dict[str, str]:
    """Rename each imported agent from its transit name to its final name on the target.

    Imports give agents new ids, so an agent is found by the name it travelled under (transit
    names are unique: :func:`plan_renames` never reuses a taken name). Returns the new id of
    each agent given its name back, by its old id.
    """
    if not given_back:
        return {}
    by_name: dict[str, list[str]] = {}
    for agent in client.list_agents():
        by_name.setdefault(agent["name"], []).append(agent["id"])
    renamed: dict[str, str] = {}
    for agent_id, change in sorted(given_back.items()):
        found = by_name.get(change["old"], [])
        if len(found) != 1:
            raise NamesNotGivenBack(
                f"Agent {agent_id} travelled as {change['old']!r}, but the target has "
                f"{len(found)} agents of that name; its name {change['new']!r} was not given back."
            )
        client.update_agent(found[0], {"name": change["new"]})
        renamed[agent_id] = found[0]
    return renamed
