"""Serve every deployment of ``prefect.yaml`` from one process (``letta-ops serve``).

Why read prefect.yaml rather than repeat it: the schedules a single operator serves must be the
ones a team deploys to a work pool; one file says both.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "prefect.yaml"


def load_deployments(path: Path | None = None) -> list[dict[str, Any]]:
    data = yaml.safe_load((path or DEFAULT_FILE).read_text())
    return list(data.get("deployments") or [])


def load_flow(entrypoint: str):
    """``flows/backup.py:backup`` -> the flow object."""
    module_path, _, name = entrypoint.partition(":")
    module = importlib.import_module(
        "letta_ops." + module_path.removesuffix(".py").replace("/", ".")
    )
    return getattr(module, name)


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
