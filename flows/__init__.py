"""The flows: each reads like the runbook it replaces.

Importing them turns Prefect's per-run heartbeat thread off (unless the operator set
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``): see :mod:`letta_ops.tasks.runs.flow_heartbeats`.
"""

from ..tasks.runs.flow_heartbeats import without_flow_heartbeats

without_flow_heartbeats()
