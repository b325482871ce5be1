"""The upgrade report's downtime window: when clients were refused, not only for how long."""

from __future__ import annotations

import json

from letta_ops.flows.reports.downtime_window import DowntimeWatch, DowntimeWindow
from letta_ops.flows.reports.upgrade import UpgradeReport


def test_a_window_only_once_the_new_version_served():
    watch = DowntimeWatch()
    assert watch.window() is None  # stopped, never served again: no window to claim
    watch.serving()
    window = watch.window()
    assert isinstance(window, DowntimeWindow)
    assert window.stopping_at <= window.serving_at
    assert window.stopping_at.utcoffset().total_seconds() == 0  # UTC, to line up with logs


def test_the_upgrade_report_carries_the_window_in_its_json():
    fields = UpgradeReport.model_fields
    assert "downtime_window" in fields and fields["downtime_window"].default is None
    watch = DowntimeWatch()
    watch.serving()
    window = watch.window().model_dump(mode="json")
    assert set(window) == {"stopping_at", "serving_at"}
    assert json.loads(json.dumps(window))["serving_at"].endswith("Z")
