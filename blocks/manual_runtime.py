"""A Letta server an operator stops and starts by hand, while the run waits in Prefect.

Why: some servers can only be touched by a person (a PaaS console, a change window, a host
letta-ops cannot reach). The run still does everything else: the verified backup, the
migrations, the checks. At each stop or start it pauses with the exact instruction (shown in
the log and as an artifact in the UI) and goes on when the operator resumes it, in the UI or
with ``letta-ops resume RUN``; then health and version are checked before anything continues.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from ..tasks.errors import Failed
from ..tasks.letta.health import probe_health, wait_for_health, wait_until_down
from .block_docs import LOGO_URL, readme_section
from .letta_runtime import (
    LettaRuntime,
    RuntimeRefused,
    StartedServer,
    health_status,
    quiet,
)

if TYPE_CHECKING:
    from .letta_database import LettaDatabase


class ManualStepFailed(Failed):
    """The operator resumed, but the server is not where the instruction asked."""


class LettaManualRuntime(LettaRuntime):
    """Stop and start by an operator's hand; the run pauses for each and checks after."""

    kind: ClassVar[str] = "manual"
    _block_type_name = "Letta Manual Runtime"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Runtimes: what stops and starts the server")
    _description = (
        "A Letta server stopped and started by an operator: the run pauses with the exact "
        "instruction and checks health and version when resumed."
    )

    base_url: str = Field(
        default="http://127.0.0.1:8283",
        description="URL at which the server answers; /v1/health/ is checked after each step.",
    )
    pause_timeout_seconds: int = Field(
        default=3600, description="How long a run waits for the operator before it fails."
    )
    check_timeout_seconds: float = Field(
        default=120,
        description="After a resume: how long the server may take to be down (stop) or "
        "healthy at the version (start).",
    )

    @classmethod
    def from_env(cls, server_name: str = "default") -> LettaManualRuntime:
        return cls(base_url=os.environ.get("LETTA_BASE_URL", "http://127.0.0.1:8283"))

    def describe(self) -> str:
        return (
            f"manual: the run pauses in Prefect for an operator to stop the server and to start "
            f"each version (resume in the UI or with 'letta-ops resume RUN'); health checked at "
            f"{self.base_url}; migrations by letta-ops before the start"
        )

    def require_drivable(self) -> None:
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            raise RuntimeRefused(
                "A server with the manual runtime is stopped and started by its operator; "
                "letta-ops can only do it inside a run that pauses for them (upgrade, rollback, "
                "recover), not from 'letta-ops runtime'."
            )

    def status(self) -> dict[str, Any]:
        return health_status(self.kind, self.base_url)

    def stop(self, log=quiet) -> bool:
        if probe_health(self.base_url) is None:
            log(f"the server at {self.base_url} is already down")
            return False
        await_operator(
            f"Stop the Letta server at {self.base_url} now (nothing else: letta-ops took a "
            "verified backup and will migrate the database itself).",
            self.pause_timeout_seconds,
        )
        try:
            wait_until_down(self.base_url, self.check_timeout_seconds)
        except TimeoutError as exc:
            raise ManualStepFailed(f"Resumed, but {exc} Stop it, then run again.") from exc
        return True

    def start(
        self, version: str, database: LettaDatabase | None = None, log=quiet
    ) -> StartedServer:
        where = f" on database {database.redacted_uri()}" if database is not None else ""
        await_operator(
            f"Start Letta {version} (image letta/letta:{version} or the letta=={version} "
            f"package){where}, serving {self.base_url}; its database is already migrated.",
            self.pause_timeout_seconds,
        )
        try:
            wait_for_health(self.base_url, version, timeout=self.check_timeout_seconds)
        except (TimeoutError, RuntimeError) as exc:
            raise ManualStepFailed(
                f"Resumed, but the server does not report Letta {version} healthy: {exc}"
            ) from exc
        return StartedServer(version, self.base_url)


def await_operator(instruction: str, timeout_seconds: int) -> None:
    """Pause the current flow run until an operator resumes it, after saying what to do (in
    the log and as the ``manual-step`` artifact shown on the run's page)."""
    from prefect import get_run_logger, pause_flow_run
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeRefused(f"Needs an operator, outside a run that can pause: {instruction}")
    run_id = context.flow_run.id
    create_markdown_artifact(
        key="manual-step",
        markdown=f"## Waiting for the operator\n\n{instruction}\n\nThen resume this run "
        f"(Resume in the UI, or `letta-ops resume {run_id}`).",
        description=instruction,
    )
    get_run_logger().warning(
        "WAITING FOR THE OPERATOR: %s Then resume: letta-ops resume %s", instruction, run_id
    )
    pause_flow_run(timeout=timeout_seconds, poll_interval=2)
