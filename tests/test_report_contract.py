"""The README's ``--json`` table is the reports' contract: every command's report, and every
top-level key of it, in the order ``--json`` prints them."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import letta_ops.cli
import letta_ops.flows
import letta_ops.tasks
from letta_ops.tasks.runs.report import FlowReport
from letta_ops.tasks.runs.report_schema import SCHEMA_VERSION

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(?P<command>[a-z -]+)` \| `(?P<report>\w+Report)` \| `(?P<keys>[^`]+)` \|$")


def documented() -> dict[str, tuple[str, list[str]]]:
    rows = {}
    for line in README.read_text().splitlines():
        found = ROW.match(line)
        if found:
            rows[found["command"]] = (found["report"], found["keys"].split(", "))
    return rows


def reports() -> dict[str, type[FlowReport]]:
    """Every FlowReport the package defines (flows, their report modules, the run helpers and
    the demo), by class name."""
    found: dict[str, type[FlowReport]] = {}
    for package in (letta_ops.cli, letta_ops.flows, letta_ops.tasks):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if module.name.endswith("__main__") or ".migrations" in module.name:
                continue
            loaded = importlib.import_module(module.name)
            for value in vars(loaded).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, FlowReport)
                    and value is not FlowReport
                ):
                    found[value.__name__] = value
    return found


def test_every_report_is_documented_with_its_keys_in_order():
    rows, models = documented(), reports()
    assert {report for report, _ in rows.values()} == set(models), "README lacks a report"
    for command, (name, keys) in rows.items():
        model = models[name]
        fields = [field.alias or field_name for field_name, field in model.model_fields.items()]
        assert keys == fields, f"README row of {command!r} differs from {name}"


@pytest.mark.parametrize("name", sorted(reports()))
def test_every_report_starts_with_the_schema_version_and_refuses_unknown_keys(name):
    model = reports()[name]
    assert next(iter(model.model_fields)) == "schema_version"
    assert model.model_fields["schema_version"].default == SCHEMA_VERSION
    assert model.model_config.get("extra") == "forbid"
