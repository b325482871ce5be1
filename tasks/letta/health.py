"""Wait until a Letta server answers healthy, at the version we meant to start.

Why a module of its own: every runtime (Docker Compose, local process) ends a start the same way,
and "healthy" alone is not enough. After ``docker compose up -d`` the *old* container can keep
answering ``/v1/health/`` for a while, and a ``latest`` tag can start a version nobody asked
for; both look healthy. So we wait for ``status == "ok"`` *and* the expected version, and give
up with one sentence that names the URL, what the server last said and what we expected.

``/v1/health/`` is never protected by the server password, so no credentials are needed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

HEALTH_PATH = "/v1/health/"
#: Seconds between two health requests while a server starts or stops. A start is the
#: operator's downtime, and it ends when the server answers, not at the next poll: a quarter
#: second keeps that lag small (it was up to a whole second), while a refused loopback connect
#: or one health GET every 0.25 s costs the server nothing it would notice.
HEALTH_POLL_SECONDS = 0.25


def health_url(base_url: str) -> str:
    """The health endpoint under ``base_url`` (with or without a trailing slash)."""
    return base_url.rstrip("/") + HEALTH_PATH


def _same_version(reported: Any, expected: str) -> bool:
    """Compare ``0.16.2`` with ``v0.16.2`` and stray whitespace as equal."""
    if not isinstance(reported, str):
        return False
    return reported.strip().removeprefix("v") == expected.strip().removeprefix("v")


def _describe(answer: str) -> str:
    """Keep error messages one readable line even when the server returns a page of HTML."""
    flat = " ".join(answer.split())
    return flat if len(flat) <= 300 else flat[:297] + "..."


def wait_for_health(
    base_url: str,
    expected_version: str | None = None,
    timeout: float = 120.0,
    poll: float = HEALTH_POLL_SECONDS,
    is_alive: Callable[[], bool] | None = None,
) -> dict:
    """Poll ``GET {base_url}/v1/health/`` until it says ``ok`` (at ``expected_version`` if given).

    Returns the health document (``{"version": "0.16.2", "status": "ok"}``).

    ``is_alive`` lets a caller that owns the server process (the process runtime) stop waiting
    the moment the process dies, instead of polling a dead port until the timeout.

    Raises :class:`TimeoutError` when the deadline passes, and :class:`RuntimeError` when
    ``is_alive`` returns False.
    """
    url = health_url(base_url)
    deadline = time.monotonic() + max(timeout, 0.0)
    want = f" at version {expected_version}" if expected_version else ""
    last = "no answer yet"

    with httpx.Client(follow_redirects=True) as client:
        while True:
            if is_alive is not None and not is_alive():
                raise RuntimeError(
                    f"The Letta server behind {url} exited before it became healthy{want} "
                    f"(last answer: {last}); read its log for the cause."
                )
            remaining = deadline - time.monotonic()
            try:
                response = client.get(url, timeout=max(0.5, min(10.0, remaining)))
                if response.status_code != 200:
                    last = f"HTTP {response.status_code}: {_describe(response.text)}"
                else:
                    body = response.json()
                    if not isinstance(body, dict):
                        last = f"unexpected body {_describe(response.text)}"
                    elif body.get("status") != "ok":
                        last = f"status {body.get('status')!r} in {_describe(response.text)}"
                    elif expected_version and not _same_version(
                        body.get("version"), expected_version
                    ):
                        last = f"healthy but at version {body.get('version')!r}"
                    else:
                        return body
            except (httpx.HTTPError, ValueError) as exc:
                # ValueError: a 200 whose body is not JSON (a proxy page, a half-started app).
                last = f"{type(exc).__name__}: {_describe(str(exc)) or 'no detail'}"

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"The Letta server at {url} did not become healthy{want} within "
                    f"{timeout:g} s (last answer: {last}); check that it started and that "
                    f"the URL and version are right."
                )
            time.sleep(min(poll, remaining))


def probe_health(base_url: str, timeout: float = 3.0) -> dict | None:
    """The health document if the server answers ``ok`` now, else None (one request)."""
    try:
        response = httpx.get(health_url(base_url), timeout=timeout, follow_redirects=True)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if response.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok":
        return body
    return None


def wait_until_down(
    base_url: str, timeout: float = 120.0, poll: float = HEALTH_POLL_SECONDS
) -> None:
    """Wait until nothing healthy answers at ``base_url`` (a runtime outside letta-ops
    stopped the server); :class:`TimeoutError` if it still answers at the deadline."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while probe_health(base_url) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"The Letta server at {base_url} still answers after {timeout:g} s.")
        time.sleep(poll)
