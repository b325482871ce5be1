"""The pure rules of tool sync: choosing targets and planning attach/detach."""

from __future__ import annotations

import pytest

from letta_ops.flows.sync_tools import effective_dry_run
from letta_ops.tasks.letta.tool_sync import (
    TargetSelectionError,
    TargetSelector,
    plan_agent_tools,
    resolve_control_agent,
    select_targets,
)

AGENTS = [
    {"id": "agent-c", "name": "control", "tags": ["fleet"]},
    {"id": "agent-1", "name": "support-1", "tags": ["fleet", "eu"]},
    {"id": "agent-2", "name": "support-2", "tags": ["fleet"]},
    {"id": "agent-3", "name": "sales-1", "tags": ["eu"]},
    {"id": "agent-4", "name": "AI/ML Expert", "tags": []},
]


def ids(agents: list[dict]) -> list[str]:
    return [a["id"] for a in agents]


def test_control_agent_by_id_or_unique_name():
    assert resolve_control_agent(AGENTS, "agent-c")["name"] == "control"
    assert resolve_control_agent(AGENTS, "AI/ML Expert")["id"] == "agent-4"
    with pytest.raises(TargetSelectionError, match="No agent"):
        resolve_control_agent(AGENTS, "nobody")
    twins = [*AGENTS, {"id": "agent-9", "name": "control", "tags": []}]
    with pytest.raises(TargetSelectionError, match="2 agents are named"):
        resolve_control_agent(twins, "control")


def test_targets_narrow_by_every_criterion_and_never_include_control():
    by_tag = select_targets(AGENTS, "agent-c", TargetSelector(tags=("fleet",)))
    assert ids(by_tag) == ["agent-1", "agent-2"]
    any_tag = select_targets(AGENTS, "agent-c", TargetSelector(tags=("fleet", "eu")))
    assert ids(any_tag) == ["agent-3", "agent-1", "agent-2"]  # ordered by name
    all_tags = TargetSelector(tags=("fleet", "eu"), match_all_tags=True)
    assert ids(select_targets(AGENTS, "agent-c", all_tags)) == ["agent-1"]
    pattern = TargetSelector(tags=("eu",), name_pattern="support-*")
    assert ids(select_targets(AGENTS, "agent-c", pattern)) == ["agent-1"]
    listed = TargetSelector(agent_ids=("agent-4", "agent-c"))
    assert ids(select_targets(AGENTS, "agent-c", listed)) == ["agent-4"]
    everyone = select_targets(AGENTS, "agent-c", TargetSelector(name_pattern="*"))
    assert "agent-c" not in ids(everyone) and len(everyone) == 4


def test_targets_refuse_empty_selector_and_unknown_ids():
    with pytest.raises(TargetSelectionError, match="No target agents chosen"):
        select_targets(AGENTS, "agent-c", TargetSelector())
    with pytest.raises(TargetSelectionError, match="agent-x"):
        select_targets(AGENTS, "agent-c", TargetSelector(agent_ids=("agent-1", "agent-x")))


def test_plan_additive_attaches_only_missing():
    desired = {f"t{i}": f"tool{i}" for i in range(10)}
    current = {**{f"t{i}": f"tool{i}" for i in range(7)}, "x": "extra"}
    plan = plan_agent_tools("a", "agent", desired, current, "additive")
    assert plan.attach == {"t7": "tool7", "t8": "tool8", "t9": "tool9"}
    assert plan.detach == {} and plan.unchanged == 7 and plan.has_changes


def test_plan_exact_also_detaches_extras_and_in_line_agent_has_nothing_to_do():
    desired = {"t1": "a", "t2": "b"}
    plan = plan_agent_tools("a", "agent", desired, {"t1": "a", "x": "extra"}, "exact")
    assert plan.attach == {"t2": "b"} and plan.detach == {"x": "extra"}
    done = plan_agent_tools("a", "agent", desired, dict(desired), "exact")
    assert not done.has_changes and done.unchanged == 2
    with pytest.raises(ValueError, match="Unknown sync mode"):
        plan_agent_tools("a", "agent", desired, {}, "force")  # type: ignore[arg-type]


def test_exact_mode_plans_unless_told_otherwise():
    assert effective_dry_run("exact", None) is True
    assert effective_dry_run("additive", None) is False
    assert effective_dry_run("exact", False) is False
    assert effective_dry_run("additive", True) is True
