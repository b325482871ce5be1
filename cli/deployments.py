"""Serve every deployment of ``prefect.yaml`` from one process (``letta-ops serve``).

Why read prefect.yaml rather than repeat it: the schedules a single operator serves must be the
ones a team deploys to a work pool; one file says both.

Why ``importlib.resources``: the file is package data of ``letta_ops`` (the repository's
top-level ``prefect.yaml`` is a link to it, for ``prefect deploy``), so an installed wheel reads
the same file a source checkout does, wherever site-packages is.
"""

from __future__ import annotations

import importlib
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml


def default_prefect_yaml() -> str:
    """The text of the ``prefect.yaml`` shipped in the ``letta_ops`` package."""
    return files("letta_ops").joinpath("prefect.yaml").read_text(encoding="utf-8")


def load_deployments(path: Path | None = None) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8") if path else default_prefect_yaml()
    data = yaml.safe_load(text)
    return list(data.get("deployments") or [])


def load_flow(entrypoint: str):
    """``letta_ops.flows.backup:backup`` -> the flow object.

    Why module paths, not file paths: the flows import their layers relatively, which only
    works when a flow's module is imported as part of ``letta_ops``; a worker then loads each
    module once, under the one name the rest of the package uses.
    """
    module_path, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module_path), name)


def build_runner_deployments(path: Path | None = None) -> list:
    from prefect.schedules import Cron

    deployments = []
    for spec in load_deployments(path):
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
            for s in spec.get("schedules") or []
        ]
        flow = load_flow(spec["entrypoint"])
        deployments.append(
            flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters") or {},
                schedules=schedules or None,
            )
        )
    return deployments


def serve_all(path: Path | None = None) -> None:
    from prefect import serve

    serve(*build_runner_deployments(path))
