"""Dependencies declared = dependencies imported.

Why: packages that product code imports but that only arrive through Prefect (psutil, rich,
PyYAML...) vanish the day Prefect drops them, and a declared package nothing imports (prefect-aws
pinned botocore through aiobotocore) constrains every operator's environment for nothing. The
product's imports are read from its source (an AST scan, no import executed) and matched to
``pyproject.toml`` through the installed distributions' metadata; no network.
"""

from __future__ import annotations

import ast
import functools
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: The folders installed as letta_ops.* (pyproject's package-dir).
PRODUCT = ("letta_ops", "blocks", "flows", "tasks", "cli")
#: Declared, never imported by name, and why.
NOT_IMPORTED = {
    "fastapi": "a cap on Prefect's server (3.8.8 breaks on fastapi>=0.151)",
    "pg8000": "sqlalchemy's PostgreSQL driver, chosen by the URL (postgresql+pg8000)",
}
#: Imported by product code only where an extra is required, the extra that provides it.
EXTRA_IMPORTS = {"moto": "demo"}


def product_imports() -> dict[str, set[str]]:
    """Top-level module name -> the product files importing it (third-party only)."""
    found: dict[str, set[str]] = {}
    for folder in PRODUCT:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "letta_ops":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    extras = {
        extra: {_canonical(Requirement(r).name) for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
    }
    return core, extras


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distribution_of(module: str) -> set[str]:
    return {_canonical(d) for d in _distributions().get(module, [])}


def test_every_import_is_a_declared_dependency() -> None:
    core, extras = declared()
    undeclared = {
        module: sorted(files)
        for module, files in product_imports().items()
        if not distribution_of(module) & core
        and not (
            module in EXTRA_IMPORTS and distribution_of(module) & extras[EXTRA_IMPORTS[module]]
        )
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_dependency_is_imported() -> None:
    core, _ = declared()
    imported: set[str] = set()
    for module in product_imports():
        imported |= distribution_of(module)
    unused = core - imported - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but imported by no product module: {unused}"
    assert set(NOT_IMPORTED) <= core, "NOT_IMPORTED names a package that is not declared"


def test_the_scan_sees_what_it_must() -> None:
    """The scan itself: it finds imports inside functions (the CLI imports lazily)."""
    imports = product_imports()
    assert "cli/demo_environment.py" in imports["moto"]  # inside a function
    assert {"prefect", "sqlalchemy", "boto3", "yaml", "rich", "psutil"} <= set(imports)
    assert distribution_of("yaml") == {"pyyaml"}


def test_the_lock_holds_every_declared_dependency() -> None:
    """``uv.lock`` is what make, the Dockerfile and CI install: it must match pyproject."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {_canonical(p["name"]) for p in lock["package"]}
    core, extras = declared()
    assert core | set().union(*extras.values()) <= locked
    [project] = [p for p in lock["package"] if p["name"] == "letta-ops"]
    pinned = {_canonical(d["name"]) for d in project["dependencies"]}
    assert pinned == core
    assert "prefect-aws" not in pinned  # never imported; it pinned botocore via aiobotocore
