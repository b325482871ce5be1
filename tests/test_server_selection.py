"""Fleet selection and waves: pure, so ``--dry-run`` and the run decide the same."""

from __future__ import annotations

import pytest

from letta_ops.tasks.runs.server_selection import (
    SelectionRefused,
    ServerEntry,
    plan_waves,
    select_servers,
)

INVENTORY = [
    ServerEntry("prod-eu", ("env:prod", "team:search")),
    ServerEntry("prod-us", ("env:prod", "team:billing")),
    ServerEntry("staging", ("env:staging", "team:search")),
    ServerEntry("billing", ()),
]


def _names(selector: str) -> list[str]:
    return [e.name for e in select_servers(INVENTORY, selector)]


def test_tags_names_globs_and_unions() -> None:
    assert _names("env:prod") == ["prod-eu", "prod-us"]
    assert _names("team:search") == ["prod-eu", "staging"]
    assert _names("team:*") == ["prod-eu", "prod-us", "staging"]
    assert _names("prod-*") == ["prod-eu", "prod-us"]
    assert _names("billing, env:staging") == ["billing", "staging"]
    assert _names("*") == ["billing", "prod-eu", "prod-us", "staging"]
    # a tag term never matches a name, nor a name term a tag
    assert _names("env:prod,prod-eu") == ["prod-eu", "prod-us"]
    with pytest.raises(SelectionRefused, match="No saved server matches 'env'"):
        select_servers(INVENTORY, "env")


def test_no_match_lists_the_inventory_and_empty_is_refused() -> None:
    with pytest.raises(SelectionRefused, match=r"saved servers: billing, prod-eu \[env:prod"):
        select_servers(INVENTORY, "env:dev")
    with pytest.raises(SelectionRefused, match="selector is empty"):
        select_servers(INVENTORY, " , ")


def test_waves_start_with_one_canary() -> None:
    names = ["a", "b", "c", "d", "e"]
    assert plan_waves(names, 2) == [["a"], ["b", "c"], ["d", "e"]]
    assert plan_waves(names, 3, canary="c") == [["c"], ["a", "b", "d"], ["e"]]
    assert plan_waves(["a"], 5) == [["a"]]
    assert plan_waves([], 5) == []
    with pytest.raises(SelectionRefused, match="canary 'x' is not among"):
        plan_waves(names, 2, canary="x")
    with pytest.raises(SelectionRefused, match="at least 1"):
        plan_waves(names, 0)


def test_fleet_commands_parse() -> None:
    from letta_ops.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["fleet-upgrade", "--to", "0.16.2", "--servers", "env:prod", "--wave-size", "3"]
        + ["--canary", "prod-eu", "--dry-run", "--local"]
    )
    assert (args.to, args.servers, args.wave_size, args.canary) == (
        "0.16.2",
        "env:prod",
        3,
        "prod-eu",
    )
    assert args.dry_run and args.local and args.deployment == "letta-upgrade/upgrade"
    args = parser.parse_args(["fleet-backup", "--per-host", "2"])
    assert (args.servers, args.per_host, args.per_store) == ("*", 2, 2)
    assert args.deployment == "letta-backup/backup"
    assert parser.parse_args(["servers", "list", "--json"]).json
