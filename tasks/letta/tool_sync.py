"""Give many agents the tools of one control agent: choose targets, plan, apply, verify.

Why: operators keep one *control* agent as the template of a fleet (42 agents in the incident
notes) and copied its tools to every other agent by hand, with a fixed 200 ms pause between
calls (84 s per sync) and a read of only the first page of each agent's tools: Letta 0.16.x
returns 10 tools per agent unless asked for more, so a one-page read sees drift that is not
there and misses drift that is. Here every list is paged, calls run a few at a time and back
off only when the server asks (429/5xx, see :meth:`letta_ops.tasks.letta.api.LettaClient.request`).

Modes: *additive* attaches what an agent lacks; *exact* also detaches what the control agent
does not have. Tools are matched by id (Letta keeps one tool per name in an organization, so
the same tool has the same id on every agent). Planning is pure and the same for a dry run
and a real run, so a dry run reports exactly what the real run would do. A second real run
plans nothing: attach and detach are idempotent on the server, and each agent is re-read
after its changes so the report says what *is*, not what was attempted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from ..errors import Refused
from .api import LettaAPIError, LettaClient
from .endpoint import LettaEndpoint

SyncMode = Literal["additive", "exact"]
SYNC_MODES: tuple[str, ...] = ("additive", "exact")


class TargetSelectionError(Refused):
    """The control agent or the targets cannot be determined; nothing was changed."""


@dataclass(frozen=True)
class TargetSelector:
    """Which agents to sync. Every given criterion must match (they narrow each other)."""

    tags: tuple[str, ...] = ()
    match_all_tags: bool = False
    name_pattern: str | None = None
    agent_ids: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.tags or self.name_pattern or self.agent_ids)

    def describe(self) -> str:
        parts = []
        if self.tags:
            joiner = " and " if self.match_all_tags else " or "
            parts.append("tag " + joiner.join(self.tags))
        if self.name_pattern:
            parts.append(f"name matching {self.name_pattern!r}")
        if self.agent_ids:
            parts.append(f"{len(self.agent_ids)} listed id(s)")
        return ", ".join(parts) or "nothing"


@dataclass
class AgentToolPlan:
    """What one agent needs: tools to attach and (exact mode) to detach, by id -> name."""

    agent_id: str
    agent_name: str
    attach: dict[str, str] = field(default_factory=dict)
    detach: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0

    @property
    def has_changes(self) -> bool:
        return bool(self.attach or self.detach)


@dataclass
class AgentToolResult:
    """What happened to one agent (or, in a dry run, would happen)."""

    agent_id: str
    agent_name: str
    attached: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    unchanged: int = 0
    error: str | None = None

    def to_row(self) -> dict:
        return {
            "agent_id": self.agent_id,
            "agent": self.agent_name,
            "attached": ", ".join(self.attached),
            "detached": ", ".join(self.detached),
            "unchanged": self.unchanged,
            "error": self.error or "",
        }


@dataclass
class ToolSyncReport:
    """One sync run: the control agent, the targets and every agent's outcome."""

    control_agent_id: str
    control_agent_name: str
    control_tools: list[str]
    mode: str
    dry_run: bool
    selector: str
    agents: list[AgentToolResult] = field(default_factory=list)

    @property
    def attached(self) -> int:
        return sum(len(a.attached) for a in self.agents)

    @property
    def detached(self) -> int:
        return sum(len(a.detached) for a in self.agents)

    @property
    def errors(self) -> int:
        return sum(1 for a in self.agents if a.error)

    def to_dict(self) -> dict:
        return {
            "control_agent": {"id": self.control_agent_id, "name": self.control_agent_name},
            "control_tools": self.control_tools,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "selector": self.selector,
            "targets": len(self.agents),
            "attached": self.attached,
            "detached": self.detached,
            "unchanged_agents": sum(
                1 for a in self.agents if not (a.attached or a.detached or a.error)
            ),
            "errors": self.errors,
            "agents": [asdict(a) for a in self.agents],
        }


# --------------------------------------------------------------------------------------------
# Pure rules
# --------------------------------------------------------------------------------------------


def resolve_control_agent(agents: Iterable[dict], control: str) -> dict:
    """The control agent, by id or by exact name; refuses an ambiguous or unknown one."""
    agents = list(agents)
    by_id = [a for a in agents if a["id"] == control]
    if by_id:
        return by_id[0]
    by_name = [a for a in agents if a.get("name") == control]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        ids = ", ".join(a["id"] for a in by_name)
        raise TargetSelectionError(
            f"{len(by_name)} agents are named {control!r} ({ids}); give the control agent's id."
        )
    raise TargetSelectionError(
        f"No agent has the id or name {control!r}; list agents with the Letta API or ADE and "
        "give the control agent's id."
    )


def select_targets(agents: Iterable[dict], control_id: str, selector: TargetSelector) -> list[dict]:
    """The agents ``selector`` picks, never the control agent itself, ordered by name.

    Refuses an empty selector (a sync of *every* agent must be asked for explicitly with
    ``name_pattern='*'``) and listed ids that do not exist, so a typo cannot silently shrink
    the fleet.
    """
    if selector.is_empty():
        raise TargetSelectionError(
            "No target agents chosen; give tags, a name pattern (use '*' for every agent) "
            "or agent ids."
        )
    agents = list(agents)
    if selector.agent_ids:
        known = {a["id"] for a in agents}
        unknown = [i for i in selector.agent_ids if i not in known]
        if unknown:
            raise TargetSelectionError(
                f"Target agent id(s) not found on the server: {', '.join(unknown)}."
            )
    wanted_ids = set(selector.agent_ids)
    picked = []
    for agent in agents:
        if agent["id"] == control_id:
            continue
        if wanted_ids and agent["id"] not in wanted_ids:
            continue
        if selector.name_pattern and not fnmatch.fnmatchcase(
            agent.get("name") or "", selector.name_pattern
        ):
            continue
        if selector.tags:
            tags = set(agent.get("tags") or [])
            match = (
                all(t in tags for t in selector.tags)
                if selector.match_all_tags
                else any(t in tags for t in selector.tags)
            )
            if not match:
                continue
        picked.append(agent)
    return sorted(picked, key=lambda a: (a.get("name") or "", a["id"]))


def plan_agent_tools(
    agent_id: str,
    agent_name: str,
    desired: dict[str, str],
    current: dict[str, str],
    mode: SyncMode,
) -> AgentToolPlan:
    """Tools (id -> name) to attach and detach so that ``current`` follows ``desired``."""
    if mode not in SYNC_MODES:
        raise Refused(f"Unknown sync mode {mode!r}; use 'additive' or 'exact'.")
    attach = {i: n for i, n in desired.items() if i not in current}
    detach = {i: n for i, n in current.items() if i not in desired} if mode == "exact" else {}
    unchanged = sum(1 for i in current if i in desired)
    return AgentToolPlan(agent_id, agent_name, attach, detach, unchanged)


# --------------------------------------------------------------------------------------------
# Against the Letta API
# --------------------------------------------------------------------------------------------


def agent_tools(client: LettaClient, agent_id: str) -> dict[str, str]:
    """Every tool of an agent (all pages), id -> name."""
    return {t["id"]: t.get("name") or t["id"] for t in client.list_agent_tools(agent_id)}


def sync_one_agent(
    client: LettaClient,
    agent: dict,
    desired: dict[str, str],
    mode: SyncMode,
    dry_run: bool,
) -> AgentToolResult:
    """Plan one agent and, unless ``dry_run``, apply and re-read it. Errors stay per agent."""
    result = AgentToolResult(agent["id"], agent.get("name") or "")
    try:
        plan = plan_agent_tools(
            agent["id"], result.agent_name, desired, agent_tools(client, agent["id"]), mode
        )
        result.unchanged = plan.unchanged
        if dry_run or not plan.has_changes:
            result.attached = sorted(plan.attach.values())
            result.detached = sorted(plan.detach.values())
            return result
        for tool_id in plan.attach:
            client.attach_tool(agent["id"], tool_id)
        for tool_id in plan.detach:
            client.detach_tool(agent["id"], tool_id)
        after = agent_tools(client, agent["id"])
        result.attached = sorted(n for i, n in plan.attach.items() if i in after)
        result.detached = sorted(n for i, n in plan.detach.items() if i not in after)
        left = plan_agent_tools(agent["id"], result.agent_name, desired, after, mode)
        if left.has_changes:
            result.error = (
                f"still differs after sync: missing {sorted(left.attach.values())}, "
                f"extra {sorted(left.detach.values())}"
            )
    except LettaAPIError as exc:
        result.error = str(exc)
    return result


def run_tool_sync(
    client: LettaClient,
    control: str,
    selector: TargetSelector,
    mode: SyncMode = "additive",
    dry_run: bool = True,
    concurrency: int = 4,
    on_agent_done: Callable[[AgentToolResult], None] | None = None,
) -> ToolSyncReport:
    """Sync every target's tools from the control agent, ``concurrency`` agents at a time."""
    if mode not in SYNC_MODES:
        raise Refused(f"Unknown sync mode {mode!r}; use 'additive' or 'exact'.")
    if concurrency < 1:
        raise Refused("Concurrency must be at least 1.")
    agents = client.list_agents()
    control_agent = resolve_control_agent(agents, control)
    targets = select_targets(agents, control_agent["id"], selector)
    desired = agent_tools(client, control_agent["id"])
    report = ToolSyncReport(
        control_agent_id=control_agent["id"],
        control_agent_name=control_agent.get("name") or "",
        control_tools=sorted(desired.values()),
        mode=mode,
        dry_run=dry_run,
        selector=selector.describe(),
    )

    def one(agent: dict) -> AgentToolResult:
        result = sync_one_agent(client, agent, desired, mode, dry_run)
        if on_agent_done is not None:
            on_agent_done(result)
        return result

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tool-sync") as pool:
        report.agents = list(pool.map(one, targets))
    return report


# --------------------------------------------------------------------------------------------
# Prefect task (thin wrapper)
# --------------------------------------------------------------------------------------------


@task(name="sync-agent-tools", cache_policy=NO_CACHE)
def run_tool_sync_task(
    server: LettaEndpoint,
    control: str,
    selector: TargetSelector,
    mode: SyncMode,
    dry_run: bool,
    concurrency: int,
) -> ToolSyncReport:
    """Never cached: the agents change under it. One task for the fleet, not one per agent,
    so 42 agents cost a few HTTP calls each rather than 42 Prefect task runs."""
    with LettaClient(server) as client:
        return run_tool_sync(client, control, selector, mode, dry_run, concurrency)
