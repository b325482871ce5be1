"""``letta-ops alerts install``: Prefect automations that notify when a job fails.

Why Prefect's automations and not a notifier of our own: the Prefect server already sees every
run's end, on every worker, including runs that crash or time out before any letta-ops code could
report; its notification blocks (Slack, e-mail, any webhook) are where operators already route
alerts. letta-ops only saves the block and the automations, idempotently (``install`` again
replaces them, so a changed URL or threshold takes effect).

Three reactive automations (a backup, a verify/restore drill, an upgrade ending Failed,
Crashed or TimedOut) and one proactive (no backup completed for ``stale_hours``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: Prefect's names of the states that mean "this run did not do its job".
FAILED_EVENTS = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
#: automation name -> (letta-ops flow names it watches, what it says)
WATCHED = {
    "letta-ops: backup failed": (["letta-backup", "letta-fleet-backup"], "backup"),
    "letta-ops: drill failed": (["letta-verify"], "verification or restore drill"),
    "letta-ops: upgrade failed": (["letta-upgrade", "letta-fleet-upgrade"], "upgrade"),
}
STALE_NAME = "letta-ops: no recent backup"
BLOCK_NAME = "letta-ops-alerts"
BODY = (
    "{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }} (tags: {{ flow_run.tags | join(', ') }})"
)


def save_webhook_block(url: str, block_name: str = BLOCK_NAME) -> Any:
    """A Prefect custom-webhook notification block POSTing ``{"subject", "body"}`` as JSON."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="letta-ops",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "letta-ops"},
    )
    block.save(block_name, overwrite=True)
    return block


def _replace(automation: Any) -> Any:
    from prefect.automations import Automation

    try:
        Automation.read(name=automation.name).delete()
    except ValueError:
        pass  # none of that name yet
    return automation.create()


def install_alerts(
    webhook_url: str | None = None,
    block_name: str = BLOCK_NAME,
    stale_hours: float = 26.0,
) -> dict[str, Any]:
    """Save the webhook block (when a URL is given; else use the saved ``block_name``, which may
    be any Prefect notification block: Slack, e-mail...) and (re)create the automations."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.core import Block

    if webhook_url:
        block = save_webhook_block(webhook_url, block_name)
    else:
        try:
            block = Block.load(block_name)
        except ValueError:
            from ..errors import Refused

            raise Refused(
                f"No notification block named {block_name!r}; pass --webhook-url URL, or save "
                "a Prefect notification block (Slack, e-mail...) under that name first."
            ) from None
    block_id = block._block_document_id
    installed = []
    for name, (flows, what) in WATCHED.items():
        automation = Automation(
            name=name,
            description=f"Notifies {block_name} when a letta-ops {what} run fails.",
            trigger=EventTrigger(
                expect=FAILED_EVENTS,
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": flows},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject=f"letta-ops {what} failed",
                    body=BODY,
                )
            ],
        )
        installed.append(str(_replace(automation).id))
    stale = Automation(
        name=STALE_NAME,
        description=f"Notifies {block_name} when no letta-ops backup completed in "
        f"{stale_hours:g} h.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": "letta-backup",
            },
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(hours=stale_hours),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="letta-ops: no recent backup",
                body=f"No letta-ops backup completed in the last {stale_hours:g} hours.",
            )
        ],
    )
    installed.append(str(_replace(stale).id))
    return {
        "block": block_name,
        "automations": [*WATCHED, STALE_NAME],
        "automation_ids": installed,
        "stale_hours": stale_hours,
    }
