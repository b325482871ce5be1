"""The tests' scans of a run's own logs and artifacts (``tests/fixtures/prefect.py``), on a
real Prefect server: a leak logged after 200 other logs and artifacts is still found.

Why: ``read_logs()`` and ``read_artifacts()`` without a filter return the server's oldest 200
rows, so a scan of them in a session that already ran a few flows never sees the run it means
to check (issue 28).
"""

from __future__ import annotations

import pytest
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tests.fixtures.prefect import flow_run_artifacts, flow_run_logs

LEAK = "leaked-secret-4b1f"


@flow
def noisy(count: int) -> str:
    """Another run's logs and artifacts, enough to fill the first pages."""
    from prefect.context import get_run_context

    for i in range(count):
        get_run_logger().info("noise %d", i)
    for i in range(count // 100):
        create_markdown_artifact(f"noise {i}", key=f"noise-{i}")
    return str(get_run_context().flow_run.id)


@flow
def leaky() -> str:
    from prefect.context import get_run_context

    get_run_logger().info("the password is %s", LEAK)
    create_markdown_artifact(f"report with {LEAK}", key="leaky-report")
    return str(get_run_context().flow_run.id)


@pytest.fixture(scope="module")
def runs(prefect_harness) -> tuple[str, str]:
    return noisy(250), leaky()


def test_a_runs_own_logs_are_read_past_the_first_page(runs):
    noise, leak = runs
    assert len(flow_run_logs([noise])) >= 250  # every page of a run of more than 200
    assert any(LEAK in message for message in flow_run_logs([leak]))
    assert not any(LEAK in message for message in flow_run_logs([noise]))


def test_a_runs_own_artifacts_are_read(runs):
    noise, leak = runs
    [report] = flow_run_artifacts([leak])
    assert LEAK in report.data and report.key == "leaky-report"
    assert len(flow_run_artifacts([noise])) == 2


def test_the_unfiltered_read_this_replaces_misses_the_leak(runs):
    """The weak form, kept as the evidence: the oldest 200 logs hold only the noise."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        oldest = [log.message for log in client.read_logs()]
    assert len(oldest) == 200 and not any(LEAK in message for message in oldest)
