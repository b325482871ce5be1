"""The tree's shape, kept by tests (README, "Structure").

Why tests and not a review: a layer that imports upward, a module that grows past what one
reader holds, a definition nothing uses, or two Prefect tasks of one name each crept in once
before; each check here fails on the first new one.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "flows", "blocks", "tasks")
MAX_MODULE_LINES = 600


def product_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_layers_import_downward_only_and_siblings_form_no_cycle(tmp_path: Path) -> None:
    """import-linter's contracts (pyproject.toml) on the package laid out as installed."""
    package = tmp_path / "letta_ops"
    package.mkdir()
    shutil.copy(ROOT / "letta_ops" / "__init__.py", package / "__init__.py")
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, package / layer, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "pyproject.toml"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout or "BROKEN" not in result.stdout


def test_no_product_module_is_longer_than_one_reader_holds() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in product_files()
        if (n := len(p.read_text().splitlines())) >= MAX_MODULE_LINES
    }
    assert long == {}, f"split these by concern: {long}"


def test_product_code_imports_its_layers_relatively() -> None:
    """A reader (or a static import graph) following an import lands on the file."""
    absolute = []
    for path in product_files():
        if "migrations" in path.parts and path.name == "env.py":  # alembic loads it by path
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "letta_ops" or node.module.startswith("letta_ops."):
                    absolute.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert absolute == []


def _top_level_names(tree: ast.Module) -> list[tuple[str, int]]:
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if not getattr(node, "decorator_list", None):  # decorated: registered by its decorator
                names.append((node.name, node.lineno))
        elif isinstance(node, ast.Assign):
            names += [(t.id, node.lineno) for t in node.targets if isinstance(t, ast.Name)]
    return names


def test_no_definition_is_dead() -> None:
    """Every top-level definition is used somewhere: product code, tests, bench or config."""
    texts = [
        p.read_text()
        for pattern in ("**/*.py", "**/*.yaml", "**/*.toml", "*.md")
        for p in ROOT.glob(pattern)
        if ".venv" not in p.parts and "node_modules" not in p.parts
    ]
    words = Counter(w for text in texts for w in re.findall(r"\b\w+\b", text))
    dead = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in product_files()
        if "migrations" not in path.parts
        for name, line in _top_level_names(ast.parse(path.read_text()))
        if not name.startswith("__") and name not in {"logger", "log"} and words[name] <= 1
    ]
    assert dead == []


def test_every_prefect_task_has_its_own_name() -> None:
    """Two tasks of one name make a run's graph in the Prefect UI ambiguous."""
    names = Counter()
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "task":
                        for kw in deco.keywords:
                            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                                names[kw.value.value] += 1
    assert names, "no task found: the scan is broken"
    assert {n: c for n, c in names.items() if c > 1} == {}


def test_the_wheel_ships_every_package_of_the_tree() -> None:
    """pyproject.toml lists the packages by hand (the four folders map into letta_ops): a new
    folder left off the list is missing from the wheel while the checkout works."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "letta_ops." + ".".join(init.parent.relative_to(ROOT).parts)
        for layer in LAYERS
        for init in (ROOT / layer).rglob("__init__.py")
    }
    assert on_disk - listed == set()
