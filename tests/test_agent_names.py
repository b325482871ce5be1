import pytest

from letta_ops.tasks.letta.agent_names import (
    ASCII,
    UNICODE,
    name_rule_for,
    plan_renames,
    sanitize_agent_name,
    strictest_rule,
)


@pytest.mark.parametrize(
    ("name", "ascii_name", "unicode_name"),
    [
        ("AI/ML Expert", "AI-ML Expert", "AI-ML Expert"),
        ("../../etc/passwd", "etc-passwd", "etc-passwd"),
        ("Café Ñandú", "Cafe Nandu", "Café Ñandú"),
        ('a:b*c?"<>|', "a-b-c", "a-b-c"),
        ("O'Brien", "O-Brien", "O'Brien"),
        ("///", "agent", "agent"),
        ("plain-name_1", "plain-name_1", "plain-name_1"),
    ],
)
def test_sanitize_per_rule(name, ascii_name, unicode_name):
    assert sanitize_agent_name(name, ASCII) == ascii_name
    assert sanitize_agent_name(name, UNICODE) == unicode_name
    assert ASCII.accepts(sanitize_agent_name(name, ASCII))
    assert UNICODE.accepts(sanitize_agent_name(name, UNICODE))


def test_rules_by_version():
    assert name_rule_for("0.11.7") is ASCII
    assert name_rule_for("0.12.1") is ASCII
    assert name_rule_for("0.13.0") is UNICODE
    assert name_rule_for("0.16.2") is UNICODE
    assert strictest_rule("0.11.7", "0.16.2") is ASCII
    assert strictest_rule("0.14.0", "0.16.2") is UNICODE


def test_plan_is_deterministic_unique_and_minimal():
    agents = [
        {"id": "agent-3", "name": "AI/ML Expert"},
        {"id": "agent-1", "name": "AI-ML Expert"},  # already valid, takes the plain name
        {"id": "agent-2", "name": "AI:ML Expert"},
        {"id": "agent-4", "name": "fine"},
    ]
    plan = plan_renames(agents, UNICODE)
    assert plan == {
        "agent-2": {"old": "AI:ML Expert", "new": "AI-ML Expert-2"},
        "agent-3": {"old": "AI/ML Expert", "new": "AI-ML Expert-3"},
    }
    assert plan_renames(list(reversed(agents)), UNICODE) == plan
    new_names = [a["name"] for a in agents if a["id"] not in plan] + [
        r["new"] for r in plan.values()
    ]
    assert len(new_names) == len(set(new_names))


def test_long_names_stay_within_the_limit():
    agents = [{"id": f"a{i}", "name": "x" * 100 + "/"} for i in range(3)]
    plan = plan_renames(agents, ASCII)
    assert all(len(r["new"]) <= 100 for r in plan.values())
    assert len({r["new"] for r in plan.values()}) == 3
