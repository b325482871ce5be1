"""What a flow says about itself to Prefect: its run id, tags and report artifacts.

Why tags: the Prefect UI's own filters must find every run by server and operation
(``server:prod``, ``op:backup``), whoever started it.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import runtime


def current_flow_run_id() -> str | None:
    run_id = runtime.flow_run.id
    return str(run_id) if run_id else None


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def tag_current_run(server: str, operation: str) -> None:
    """Add ``server:NAME`` and ``op:OPERATION`` tags to the running flow run."""
    run_id = runtime.flow_run.id
    if not run_id:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id)
        tags = sorted({*current.tags, f"server:{server}", f"op:{operation}"})
        client.update_flow_run(run_id, tags=tags)


def publish_report(
    server: str, operation: str, markdown: str, rows: list[dict[str, Any]] | None = None
) -> None:
    """A markdown summary and (optionally) a table artifact, keyed by operation and server."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(operation, server),
        description=f"letta-ops {operation} of {server}",
    )
    if rows:
        create_table_artifact(
            table=rows,
            key=artifact_key(operation, server, "table"),
            description=f"letta-ops {operation} of {server}: details",
        )
