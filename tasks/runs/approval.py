"""The operator's go-ahead between a destructive run's plan and its first destructive step.

Why a ``RunInput``: the Prefect UI shows it as a form on the paused run, so approving is one
click where the operator already reads the plan (the run's report artifact), and the answer
(with who gave it) goes into the audit record.
"""

from __future__ import annotations

from prefect import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from ..errors import Refused


class OperatorApproval(RunInput):
    """What the operator answers when the run pauses before its first destructive step."""

    approve: bool = Field(default=False, description="Go ahead with the destructive steps.")
    operator: str = Field(default="", description="Who approves; recorded in the audit history.")


class ApprovalDeclined(Refused):
    """The operator said no (or did not answer in time); nothing was changed."""


def await_operator_approval(operation: str, server: str, timeout_seconds: int = 3600) -> str:
    """Pause the run until an operator answers; returns who approved."""
    answer = pause_flow_run(wait_for_input=OperatorApproval, timeout=timeout_seconds)
    if not answer.approve:
        raise ApprovalDeclined(
            f"The operator declined the {operation} of {server}; nothing was changed."
        )
    return answer.operator or "unnamed operator"
