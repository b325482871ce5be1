"""Which agents of a backup set to restore into a running server, and under which names.

Why a plan before any import: an operator names agents by id or by name; names are not unique
and may break the running version's name rule (importing such a file fails), and restoring
beside a live agent must not produce two agents nobody can tell apart. Every refusal is known
before the first import, so a bad request changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..letta.agent_names import MAX_NAME_LENGTH, NameRule, sanitize_agent_name, unique_name
from .catalog import BackupSetError
from .manifest import AgentEntry, BackupManifest


class AgentRestoreRefused(BackupSetError):
    """The request names agents that cannot be restored as asked; nothing was imported."""


@dataclass(frozen=True)
class AgentRestoreStep:
    """One agent to import: where its file is and the name it gets on the server."""

    agent_id: str  # the id in the backup set (the server gives the import a new one)
    name_in_set: str
    restore_as: str
    file: str

    @property
    def renamed(self) -> bool:
        return self.restore_as != self.name_in_set

    def to_dict(self) -> dict:
        return {**asdict(self), "renamed": self.renamed}


def select_agents(manifest: BackupManifest, wanted: list[str]) -> list[AgentEntry]:
    """The set's agents named by id or exact name, in request order, each once."""
    if not wanted:
        raise AgentRestoreRefused("Name at least one agent (id or name) to restore.")
    label = f"{manifest.server}/{manifest.set_id}"
    chosen: dict[str, AgentEntry] = {}
    for item in wanted:
        by_id = [a for a in manifest.agents if a.id == item]
        matches = by_id or [a for a in manifest.agents if a.name == item]
        if not matches:
            known = ", ".join(f"{a.name!r}" for a in manifest.agents[:10]) or "no agents"
            raise AgentRestoreRefused(
                f"Backup set {label} has no agent with id or name {item!r}; it holds {known}"
                + (" ..." if len(manifest.agents) > 10 else "")
                + "."
            )
        if len(matches) > 1:
            ids = ", ".join(a.id for a in matches)
            raise AgentRestoreRefused(
                f"{len(matches)} agents in backup set {label} are called {item!r} ({ids}); "
                "name the one to restore by id."
            )
        entry = matches[0]
        if entry.file is None:
            raise AgentRestoreRefused(
                f"Agent {entry.name!r} ({entry.id}) could not be exported when set {label} was "
                "taken, so the set has no agent file for it; only its pg_dump holds it "
                "('letta-ops restore' onto a scratch database)."
            )
        chosen.setdefault(entry.id, entry)
    return list(chosen.values())


def copy_name(name: str, set_date: str, rule: NameRule) -> str:
    """``Research Bot`` restored from a set of 2026-11-23 -> ``Research Bot restored 2026-11-23``.

    Brackets would break both Letta name rules, so the suffix uses only accepted characters.
    """
    suffix = f" restored {set_date}"
    base = sanitize_agent_name(name, rule)[: MAX_NAME_LENGTH - len(suffix)].rstrip(" -'")
    return f"{base or 'agent'}{suffix}"


def plan_agent_restore(
    manifest: BackupManifest,
    wanted: list[str],
    live_agents: list[dict],
    rule: NameRule,
    as_copy: bool = False,
) -> list[AgentRestoreStep]:
    """Decide every agent's name on the running server, refusing conflicts with live agents.

    Without ``as_copy`` an agent is restored under its own name (sanitized for ``rule``) and
    only if neither it (by id) nor another agent of that name is live; with ``as_copy`` it
    gets a new name beside whatever is live.
    """
    live_ids = {a["id"]: a["name"] for a in live_agents}
    taken = set(live_ids.values())
    set_date = manifest.created_at.date().isoformat()
    steps = []
    for entry in select_agents(manifest, wanted):
        assert entry.file is not None
        if as_copy:
            name = unique_name(copy_name(entry.name, set_date, rule), taken)
        else:
            if entry.id in live_ids:
                raise AgentRestoreRefused(
                    f"Agent {entry.name!r} ({entry.id}) is still live on this server; restore "
                    "it beside the live one with --as-copy, or delete the live agent first."
                )
            name = sanitize_agent_name(entry.name, rule)
            if name in taken:
                holder = next((i for i, n in live_ids.items() if n == name), None)
                raise AgentRestoreRefused(
                    f"A live agent is already called {name!r}"
                    + (f" ({holder})" if holder else " (another agent of this restore)")
                    + "; restore with --as-copy to give the restored agent a new name."
                )
        taken.add(name)
        steps.append(
            AgentRestoreStep(
                agent_id=entry.id, name_in_set=entry.name, restore_as=name, file=entry.file
            )
        )
    return steps
