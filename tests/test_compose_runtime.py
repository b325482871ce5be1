"""The Docker Compose runtime: pinning the server image, and running ``docker compose``.

The pinning tests are pure. The runtime tests use a **fake** ``docker`` executable put first on
PATH, because no Docker engine can run on this machine (the design allows a stand-in only where
no real component can run). The fake records its argv and starts nothing; a small real HTTP
server on 127.0.0.1 plays the Letta health endpoint, so the health wait is exercised for real.
"""

from __future__ import annotations

import http.server
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from letta_ops.blocks.compose_runtime import DockerComposeRuntime
from letta_ops.tasks.docker_compose import ComposeCommandError, compose_command
from letta_ops.tasks.letta.health import wait_for_health
from letta_ops.tasks.letta.versions import UnsupportedLettaVersion
from letta_ops.tasks.runtimes.compose import (
    ComposeFileError,
    compose_image_tag,
    compose_stop,
    compose_up,
    deploy_pinned_version,
    pin_compose_file,
    pin_compose_image,
)

COMPOSE = """\
# Letta server with PostgreSQL + pgvector (operator's own file; keep my comments!)
x-logging: &logging
  driver: json-file
  options:
    max-size: "10m"

services:
  letta_db:
    image: ankane/pgvector:v0.5.1   # database: do not touch
    environment:
      POSTGRES_USER: ${LETTA_PG_USER:-letta}
      POSTGRES_PASSWORD: ${LETTA_PG_PASSWORD:-letta}
      POSTGRES_DB: letta
    volumes:
      - ./.persist/pgdata:/var/lib/postgresql/data
    logging: *logging

  # the server itself
  letta_server:
    image: letta/letta:latest  # TODO pin this
    depends_on:
      - letta_db
    ports:
      - "8283:8283"
    environment:
      LETTA_PG_URI: ${LETTA_PG_URI}
      OPENAI_API_KEY: ${OPENAI_API_KEY}
      # image: not-this-one
    command: >
      sh -c "image: also-not-this"
    labels:
      image: "a label, not the service's image"
    logging: *logging

volumes:
  pgdata: {}
"""

SERVER_LINE = 19  # 0-based index of the letta_server image line in COMPOSE


def _changed_lines(before: str, after: str) -> list[tuple[int, str, str]]:
    old, new = before.split("\n"), after.split("\n")
    assert len(old) == len(new), "pinning must not add or remove lines"
    return [(i, a, b) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]


# ------------------------------------------------------------------------------------------
# pin_compose_image / compose_image_tag (pure)
# ------------------------------------------------------------------------------------------


def test_pin_changes_only_the_server_image_line() -> None:
    pinned = pin_compose_image(COMPOSE, "letta_server", "0.16.2")

    assert _changed_lines(COMPOSE, pinned) == [
        (
            SERVER_LINE,
            "    image: letta/letta:latest  # TODO pin this",
            "    image: letta/letta:0.16.2  # TODO pin this",
        )
    ]
    assert "# Letta server with PostgreSQL + pgvector (operator's own file; keep my comments!)" in (
        pinned
    )
    assert "    image: ankane/pgvector:v0.5.1   # database: do not touch\n" in pinned
    assert "      # image: not-this-one\n" in pinned
    assert compose_image_tag(pinned, "letta_server") == "0.16.2"
    assert compose_image_tag(pinned, "letta_db") == "v0.5.1"
    # pinning twice is a no-op
    assert pin_compose_image(pinned, "letta_server", "0.16.2") == pinned


def test_tag_reads_latest_and_missing_tag() -> None:
    assert compose_image_tag(COMPOSE, "letta_server") == "latest"
    untagged = COMPOSE.replace("letta/letta:latest", "letta/letta")
    assert compose_image_tag(untagged, "letta_server") is None
    assert pin_compose_image(untagged, "letta_server", "0.11.7").split("\n")[SERVER_LINE] == (
        "    image: letta/letta:0.11.7  # TODO pin this"
    )


@pytest.mark.parametrize("version", ["latest", "0.34.0", "0.17.0", "0.16", ""])
def test_unsupported_versions_are_refused(version: str) -> None:
    with pytest.raises(UnsupportedLettaVersion):
        pin_compose_image(COMPOSE, "letta_server", version)


def test_missing_service_is_refused() -> None:
    with pytest.raises(ComposeFileError, match="no service named 'letta'"):
        pin_compose_image(COMPOSE, "letta", "0.16.2")


def test_nested_key_with_service_name_is_not_a_service() -> None:
    # "letta_db" appears as a list item under depends_on; only keys under services: count.
    text = COMPOSE.replace("  letta_db:\n", "  postgres:\n", 1)
    with pytest.raises(ComposeFileError, match="no service named 'letta_db'"):
        pin_compose_image(text, "letta_db", "0.16.2")


def test_build_only_service_is_refused() -> None:
    text = COMPOSE.replace("    image: letta/letta:latest  # TODO pin this\n", "    build: .\n")
    with pytest.raises(ComposeFileError, match="no 'image:' line") as info:
        pin_compose_image(text, "letta_server", "0.16.2")
    assert "build:" in str(info.value)


def test_no_services_key_is_refused() -> None:
    with pytest.raises(ComposeFileError, match="no top-level 'services:'"):
        pin_compose_image("version: '3'\n", "letta_server", "0.16.2")


def test_image_from_variable_is_refused() -> None:
    text = COMPOSE.replace("letta/letta:latest", "${LETTA_IMAGE:-letta/letta:latest}")
    with pytest.raises(ComposeFileError, match="variable"):
        pin_compose_image(text, "letta_server", "0.16.2")


def test_digest_is_replaced_by_the_tag_and_registry_kept() -> None:
    digest = "sha256:" + "ab" * 32
    text = COMPOSE.replace("letta/letta:latest", f"ghcr.io:443/foo/letta:0.11.3@{digest}")
    pinned = pin_compose_image(text, "letta_server", "0.16.2")
    assert _changed_lines(text, pinned) == [
        (
            SERVER_LINE,
            f"    image: ghcr.io:443/foo/letta:0.11.3@{digest}  # TODO pin this",
            "    image: ghcr.io:443/foo/letta:0.16.2  # TODO pin this",
        )
    ]
    digest_only = COMPOSE.replace("letta/letta:latest", f"letta/letta@{digest}")
    assert compose_image_tag(digest_only, "letta_server") is None
    assert "    image: letta/letta:0.16.8  # TODO" in pin_compose_image(
        digest_only, "letta_server", "0.16.8"
    )


@pytest.mark.parametrize("quote", ['"', "'"])
def test_quoted_image_stays_quoted(quote: str) -> None:
    text = COMPOSE.replace("letta/letta:latest", f"{quote}ghcr.io/foo/letta:latest{quote}")
    pinned = pin_compose_image(text, "letta_server", "0.16.2")
    assert pinned.split("\n")[SERVER_LINE] == (
        f"    image: {quote}ghcr.io/foo/letta:0.16.2{quote}  # TODO pin this"
    )
    assert len(_changed_lines(text, pinned)) == 1


def test_crlf_and_other_indentation_are_kept() -> None:
    text = (
        "services:\r\n"
        "    letta_server:\r\n"
        "        image: letta/letta:0.11.7\r\n"
        "        ports: ['8283:8283']\r\n"
        "    db:\r\n"
        "        image: letta/letta:0.11.7\r\n"
    )
    pinned = pin_compose_image(text, "letta_server", "0.16.2")
    assert pinned == text.replace("0.11.7", "0.16.2", 1)


# ------------------------------------------------------------------------------------------
# pin_compose_file (atomic rewrite)
# ------------------------------------------------------------------------------------------


def test_pin_compose_file_rewrites_atomically_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE)
    path.chmod(0o640)

    assert pin_compose_file(path, "letta_server", "0.16.2") is True
    assert path.read_text() == pin_compose_image(COMPOSE, "letta_server", "0.16.2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-compose.yml"]

    mtime = path.stat().st_mtime_ns
    inode = path.stat().st_ino
    assert pin_compose_file(path, "letta_server", "0.16.2") is False
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (mtime, inode)


def test_pin_compose_file_leaves_file_alone_on_error(tmp_path: Path) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE)
    with pytest.raises(UnsupportedLettaVersion):
        pin_compose_file(path, "letta_server", "latest")
    assert path.read_text() == COMPOSE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-compose.yml"]


def test_compose_command_puts_project_before_subcommand(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    assert compose_command(f, "up", "-d", "s") == [
        "docker",
        "compose",
        "-f",
        str(f),
        "up",
        "-d",
        "s",
    ]
    assert compose_command(f, "stop", "s", project_name="prod") == [
        "docker", "compose", "-f", str(f), "-p", "prod", "stop", "s",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# Runtime: fake docker + real HTTP health endpoint
# ------------------------------------------------------------------------------------------

FAKE_DOCKER = """\
#!{python}
# Fake `docker`: no Docker engine can run on this test machine. Records argv, starts nothing.
import json, os, sys
with open({record!r}, "a") as out:
    out.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
fail = os.environ.get("FAKE_DOCKER_FAIL")
if fail:
    sys.stdout.write("some progress output\\n")
    sys.stderr.write(fail + "\\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a fake ``docker`` first on PATH; return the file where it records each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "docker-calls.jsonl"
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, record=str(record)))
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("FAKE_DOCKER_FAIL", raising=False)
    return record


def _calls(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


class _Health:
    """What the fake Letta health endpoint answers; tests change it while it runs."""

    def __init__(self) -> None:
        self.body: dict = {"version": "0.16.2", "status": "ok"}
        self.hits = 0
        self.unready_hits = 0  # the first this many requests get a 503, as a start in progress


@pytest.fixture
def letta_health() -> Iterator[tuple[str, _Health]]:
    """A real HTTP server on 127.0.0.1 answering ``GET /v1/health/`` like a Letta server."""
    state = _Health()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.hits += 1
            if self.path != "/v1/health/":
                self.send_error(404)
                return
            if state.hits <= state.unready_hits:
                self.send_error(503)
                return
            payload = json.dumps(state.body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_deploy_pins_runs_up_and_waits_for_the_version(
    tmp_path: Path, fake_docker: Path, letta_health: tuple[str, _Health]
) -> None:
    base_url, state = letta_health
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(COMPOSE)

    result = deploy_pinned_version(compose_file, "letta_server", "0.16.2", base_url, timeout=10)

    assert _calls(fake_docker) == [
        ["docker", "compose", "-f", str(compose_file), "up", "-d", "letta_server"]
    ]
    assert compose_image_tag(compose_file.read_text(), "letta_server") == "0.16.2"
    assert compose_image_tag(compose_file.read_text(), "letta_db") == "v0.5.1"
    assert result == {
        "changed": True,
        "version": "0.16.2",
        "health": {"version": "0.16.2", "status": "ok"},
    }
    assert state.hits >= 1


def test_wait_for_health_times_out_on_another_version(letta_health: tuple[str, _Health]) -> None:
    base_url, state = letta_health
    state.body = {"version": "0.11.3", "status": "ok"}  # the old container still answering

    with pytest.raises(TimeoutError) as info:
        wait_for_health(base_url, expected_version="0.16.2", timeout=2, poll=0.2)
    message = str(info.value)
    assert f"{base_url}/v1/health/" in message
    assert "0.16.2" in message and "0.11.3" in message
    assert state.hits >= 2  # it kept polling until the deadline


def test_wait_for_health_answers_soon_after_the_server_is_ready(
    letta_health: tuple[str, _Health],
) -> None:
    """The wait ends within a fraction of a second of the server's readiness: a start's
    downtime is not stretched by a second of polling lag (the default poll was 1 s)."""
    base_url, state = letta_health
    state.unready_hits = 2  # starting: two polls see a 503 before the third sees ok
    started = time.monotonic()
    assert wait_for_health(base_url, "0.16.2", timeout=30) == state.body
    waited = time.monotonic() - started
    assert state.hits == 3
    assert waited < 1.5, f"{waited:.2f} s for two polls: the default poll is too long"


def test_wait_for_health_stops_when_the_process_dies(letta_health: tuple[str, _Health]) -> None:
    base_url, state = letta_health
    state.body = {"version": "0.11.3", "status": "ok"}
    with pytest.raises(RuntimeError, match="exited before it became healthy"):
        wait_for_health(base_url, "0.16.2", timeout=30, poll=0.1, is_alive=lambda: False)


def test_wait_for_health_reports_connection_errors(tmp_path: Path) -> None:
    from letta_ops.tasks.postgres.embedded import free_loopback_port

    url = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(TimeoutError, match="ConnectError"):
        wait_for_health(url, None, timeout=0.5, poll=0.1)


def test_failing_docker_raises_with_its_stderr(
    tmp_path: Path, fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "Cannot connect to the Docker daemon at unix:///x.sock")
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(COMPOSE)

    with pytest.raises(ComposeCommandError, match="Cannot connect to the Docker daemon") as info:
        compose_up(compose_file, "letta_server")
    assert "exit code 1" in str(info.value)
    with pytest.raises(ComposeCommandError, match="Cannot connect"):
        compose_stop(compose_file, "letta_server", project_name="prod")
    assert _calls(fake_docker)[-1] == [
        "docker", "compose", "-f", str(compose_file), "-p", "prod", "stop", "letta_server",
    ]  # fmt: skip


def test_missing_docker_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ComposeCommandError, match="install Docker.*process runtime"):
        compose_up(tmp_path / "docker-compose.yml", "letta_server")


def test_block_delegates_to_the_runtime(
    tmp_path: Path, fake_docker: Path, letta_health: tuple[str, _Health]
) -> None:
    base_url, _ = letta_health
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(COMPOSE)
    block = DockerComposeRuntime(
        compose_file=compose_file, project_name="letta", base_url=base_url,
        startup_timeout_seconds=10,
    )  # fmt: skip

    assert block.pin("0.11.7") is True
    assert block.start("0.16.2").version == "0.16.2"
    block.stop()
    assert _calls(fake_docker) == [
        ["docker", "compose", "-f", str(compose_file), "-p", "letta", "up", "-d", "letta_server"],
        ["docker", "compose", "-f", str(compose_file), "-p", "letta", "ps", "--format", "json",
         "--all", "letta_server"],
        ["docker", "compose", "-f", str(compose_file), "-p", "letta", "stop", "letta_server"],
    ]  # fmt: skip
    assert compose_image_tag(compose_file.read_text(), "letta_server") == "0.16.2"
