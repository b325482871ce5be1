"""What a flow says about itself to Prefect: its run id, tags and report artifacts.

Why tags: the Prefect UI's own filters must find every run by server and operation
(``server:prod``, ``op:backup``), whoever started it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from prefect import runtime


def current_flow_run_id() -> str | None:
    run_id = runtime.flow_run.id
    return str(run_id) if run_id else None


#: Prefect states after which a run does nothing more (a holder in one is dead).
TERMINAL_STATES = frozenset({"CRASHED", "CANCELLED", "FAILED", "COMPLETED"})


def flow_run_state(run_id: str | None) -> str | None:
    """The Prefect state type of a flow run (``RUNNING``, ``CRASHED``...), or None when it
    cannot be read (no id, another Prefect server, none reachable). Audit record ids are
    flow-run ids, suffixed ``-rN`` on retries."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        flow_run_id = UUID(str(run_id)[:36])
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # noqa: BLE001 - unknown: callers then rely on the pid
        return None
    return state.type.value if state else None


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def default_server_name() -> str:
    """The server name a run without ``server`` resolves to (no I/O: environment only)."""
    try:
        from ..letta.endpoint import LettaEndpoint

        return LettaEndpoint.from_env().server_name
    except Exception:  # noqa: BLE001 - a bad URL is reported by the flow itself
        return "letta"


def run_name(operation: str, *details: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``OPERATION-SERVER[-DETAIL...]``.

    Why not a template: ``"backup-{server}"`` names a run ``backup-None`` when the server
    comes from the environment, and the UI's name search then finds nothing. Details are
    parameter names (``to_version``) whose values are appended when set; ``backup_set``
    supplies the server itself when it names one (``prod/2026...``).
    """

    def name() -> str:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        params = dict(getattr(ctx, "parameters", None) or {})
        server = params.get("server")
        reference = str(params.get("backup_set") or "")
        if not server and "/" in reference:
            server = reference.rsplit("/", 1)[0]
        parts = [operation, str(server or default_server_name())]
        for detail in details:
            value = params.get(detail)
            if value is None or value == "":
                continue
            if detail == "backup_set":
                value = str(value).rsplit("/", 1)[-1]
            parts.append(f"to-{value}" if detail == "to_version" else str(value))
        return "-".join(parts)

    name.__name__ = f"{operation}_run_name"
    return name


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


def publish_json_report(server: str, operation: str, report: Any) -> str:
    """The report's ``--json`` document as a markdown artifact keyed ``OPERATION-SERVER-json``:
    one fenced JSON block, readable in the UI and, stripped of its fence, the same document a
    script gets from the command line (so a deployment's runs need no shell to be scripted).
    Returns the key."""
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(operation, server, "json")
    document = json.dumps(report.model_dump(mode="json"), indent=2)
    create_markdown_artifact(
        markdown=f"```json\n{document}\n```",
        key=key,
        description=f"letta-ops {operation} of {server}: the --json report",
    )
    return key


def json_of_artifact(markdown: str) -> Any:
    """The document of a :func:`publish_json_report` artifact (its fence removed)."""
    body = markdown.strip().removeprefix("```json").removesuffix("```")
    return json.loads(body)
