"""Prefect runs of letta-ops: the server lock, journal, reports, context, timeouts, approval."""
