"""``letta-ops alerts install`` against a real Prefect server, notifying a real HTTP receiver.

A drill that fails (its set does not exist) ends its run Failed; Prefect's own trigger and
action services turn that into a POST through the saved webhook block, received here by a
plain HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from letta_ops.cli.main import main

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue]]:
    """A webhook receiver on a free loopback port; yields its URL and the bodies it got."""
    received: queue.Queue = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length", 0))
            received.put(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_drill_notifies_the_webhook(prefect_harness, receiver, tmp_path, monkeypatch):
    from prefect.automations import Automation

    from letta_ops.flows.verify import verify

    url, received = receiver
    assert main(["alerts", "install", "--webhook-url", url, "--json"]) == 0
    assert main(["alerts", "install", "--webhook-url", url]) == 0  # again: replaced, not doubled
    drill_alert = Automation.read(name="letta-ops: drill failed")
    assert drill_alert.enabled

    (tmp_path / "store").mkdir()
    monkeypatch.setenv("LETTA_OPS_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("LETTA_OPS_SERVER_NAME", "alerting")
    state = verify(backup_set="alerting/20260101T000000Z-none", drill=True, return_state=True)
    assert state.is_failed()

    deadline = time.monotonic() + 90
    bodies = []
    while time.monotonic() < deadline and not any("drill" in b.get("subject", "") for b in bodies):
        try:
            bodies.append(received.get(timeout=2))
        except queue.Empty:
            continue
    drills = [b for b in bodies if "drill" in b.get("subject", "")]
    assert len(drills) == 1, bodies
    assert drills[0]["source"] == "letta-ops"
    assert "letta-verify" in drills[0]["body"] and "Failed" in drills[0]["body"], drills[0]
    # The backup and upgrade automations did not fire for a drill.
    assert not [b for b in bodies if "backup failed" in b.get("subject", "")]


def test_without_a_url_or_a_saved_block_it_is_refused(prefect_harness, capsys):
    assert main(["alerts", "install", "--block", "no-such-block-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--webhook-url" in err[0]
