"""The names of a rebuild: what the files carry, and what the agents end up as."""

from letta_ops.tasks.letta.agent_names import UNICODE
from letta_ops.tasks.letta.rebuild_names import names_to_give_back, plan_rebuild_names

AGENTS = [
    {"id": "agent-1", "name": "Café Ñandú"},
    {"id": "agent-2", "name": "AI/ML Expert"},
    {"id": "agent-3", "name": "plain"},
    {"id": "agent-4", "name": "Cafe Nandu"},  # the ASCII form of agent-1's name is taken
]


def test_rebuild_from_ascii_gives_unicode_names_back():
    names = plan_rebuild_names(AGENTS, "0.11.7", "0.16.2", "rebuild")
    assert names.rule is UNICODE
    # What the target refuses changes for good; nothing else does.
    assert names.final == {"agent-2": {"old": "AI/ML Expert", "new": "AI-ML Expert"}}
    # The files carry names the ASCII exporter accepts, unique among all agents.
    assert names.transit == {
        "agent-1": {"old": "Café Ñandú", "new": "Cafe Nandu-2"},
        "agent-2": {"old": "AI/ML Expert", "new": "AI-ML Expert"},
    }
    assert names.given_back() == {"agent-1": {"old": "Cafe Nandu-2", "new": "Café Ñandú"}}


def test_same_rule_on_both_sides_gives_nothing_back():
    names = plan_rebuild_names(AGENTS, "0.14.0", "0.16.2", "rebuild")
    assert (
        names.transit == names.final == {"agent-2": {"old": "AI/ML Expert", "new": "AI-ML Expert"}}
    )
    assert names.given_back() == {}


def test_migrate_carries_no_transit_names():
    names = plan_rebuild_names(AGENTS, "0.11.7", "0.16.2", "migrate")
    assert names.transit == {} and names.given_back() == {}
    assert list(names.final) == ["agent-2"]


def test_give_back_to_a_final_name_that_differs_from_both():
    # The target refuses the old name too, but sanitizes it otherwise than the source did.
    transit = {"a": {"old": "Ünï/x", "new": "Uni-x"}}
    final = {"a": {"old": "Ünï/x", "new": "Ünï-x"}}
    assert names_to_give_back(transit, final) == {"a": {"old": "Uni-x", "new": "Ünï-x"}}
