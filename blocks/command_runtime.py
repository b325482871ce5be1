"""A Letta server run by something letta-ops does not know: operator-given stop and start.

Why: servers run under systemd, Kubernetes, a PaaS deploy hook. The operator knows the two
commands that stop the server and start a version (``systemctl stop letta``; ``kubectl set
image deploy/letta letta=letta/letta:{version} && kubectl rollout status deploy/letta`` as a
script); letta-ops runs them, without a shell, with secrets only in their environment, and
then trusts nothing but ``/v1/health/``: down after the stop, the version after the start.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from ..tasks.errors import Failed, Refused, final_error_line
from ..tasks.letta.health import probe_health, wait_for_health, wait_until_down
from ..tasks.runtimes.install import redact
from ..tasks.sets.manifest import RELEASE_VERSION
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

log = logging.getLogger(__name__)


class RuntimeCommandFailed(Failed):
    """The operator's stop or start command failed; the message names it and its last line."""


def command_argv(template: list[str], version: str | None = None) -> list[str]:
    """The argv of a command template, ``{version}`` filled in each argument. The version must
    be a release (X.Y.Z), wherever it came from (a manifest included): nothing else reaches an
    operator's command."""
    if version is None:
        return list(template)
    if not RELEASE_VERSION.match(version):
        raise Refused(
            f"{version[:40]!r} is not a Letta release (X.Y.Z); it is not put into the "
            "operator's command."
        )
    return [part.replace("{version}", version) for part in template]


class LettaCommandRuntime(LettaRuntime):
    """Stop and start a Letta server with the operator's own commands (no shell)."""

    kind: ClassVar[str] = "command"
    _block_type_name = "Letta Command Runtime"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Runtimes: what stops and starts the server")
    _description = (
        "A Letta server stopped and started by the operator's commands (systemctl, kubectl, "
        "a deploy hook); letta-ops waits for /v1/health/ to report the version."
    )

    base_url: str = Field(
        default="http://127.0.0.1:8283",
        description="URL at which the server answers; /v1/health/ is polled there.",
    )
    stop_command: list[str] = Field(
        description="argv that stops the server (a string is split like a shell would, but "
        "runs without one), e.g. ['systemctl', 'stop', 'letta'].",
    )
    start_command: list[str] = Field(
        description="argv that starts Letta {version} on the (already migrated) database and "
        "returns, e.g. ['/opt/deploy/letta-start', '{version}']; LETTA_OPS_VERSION is set too.",
    )
    command_env: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra environment for both commands (secret values: never in argv).",
    )
    stop_timeout_seconds: float = Field(
        default=120, description="How long the server may still answer after the stop command."
    )
    command_timeout_seconds: float = Field(
        default=900, description="How long each command may run before it is failed."
    )

    @field_validator("stop_command", "start_command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @classmethod
    def from_env(cls, server_name: str = "default") -> LettaCommandRuntime:
        """``LETTA_OPS_STOP_COMMAND`` and ``LETTA_OPS_START_COMMAND``, server at
        ``LETTA_BASE_URL``."""
        return cls(
            base_url=os.environ.get("LETTA_BASE_URL", "http://127.0.0.1:8283"),
            stop_command=os.environ.get("LETTA_OPS_STOP_COMMAND", ""),
            start_command=os.environ.get("LETTA_OPS_START_COMMAND", ""),
        )

    def describe(self) -> str:
        return (
            f"operator commands: stop with '{shlex.join(self.stop_command)}', start with "
            f"'{shlex.join(self.start_command)}' (no shell), health at {self.base_url}; "
            "migrations by letta-ops before the start"
        )

    def require_drivable(self) -> None:
        for what, argv in (
            ("stop_command", self.stop_command),
            ("start_command", self.start_command),
        ):
            if not argv:
                raise RuntimeRefused(
                    f"The command runtime has no {what}; set it (LETTA_OPS_"
                    f"{what.upper()}) to the command that "
                    f"{'stops the server' if what == 'stop_command' else 'starts {version}'}."
                )
            if shutil.which(argv[0]) is None:
                raise RuntimeRefused(
                    f"The {what} program {argv[0]!r} is not an executable on PATH or a path; "
                    "fix the command runtime's configuration."
                )

    def status(self) -> dict[str, Any]:
        return health_status(self.kind, self.base_url)

    def _run(self, what: str, argv: list[str], version: str | None, log) -> None:
        secrets = {k: v.get_secret_value() for k, v in self.command_env.items()}
        env = {**os.environ, **secrets}
        if version:
            env["LETTA_OPS_VERSION"] = version
        log(f"{what}: {shlex.join(argv)}")
        try:
            result = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.command_timeout_seconds,
                stdin=subprocess.DEVNULL,
                cwd=Path.home(),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeCommandFailed(
                f"The {what} command '{shlex.join(argv)}' failed: {exc}."
            ) from exc
        output = redact((result.stdout or "") + (result.stderr or ""), tuple(secrets.values()))
        if output.strip():
            log(f"{what} output:\n{output.strip()}")
        if result.returncode != 0:
            raise RuntimeCommandFailed(
                f"The {what} command '{shlex.join(argv)}' exited {result.returncode}: "
                f"{final_error_line(output)}"
            )

    def stop(self, log=quiet) -> bool:
        """Run the stop command, then wait until the server no longer answers; True if it
        answered before."""
        was_running = probe_health(self.base_url) is not None
        self._run("stop", command_argv(self.stop_command), None, log)
        try:
            wait_until_down(self.base_url, self.stop_timeout_seconds)
        except TimeoutError as exc:
            raise RuntimeCommandFailed(
                f"The stop command succeeded but {exc} Check what it stops."
            ) from exc
        return was_running

    def start(
        self, version: str, database: LettaDatabase | None = None, log=quiet
    ) -> StartedServer:
        """Run the start command for ``version``; return when health reports it."""
        self._run("start", command_argv(self.start_command, version), version, log)
        health = wait_for_health(self.base_url, version, timeout=self.startup_timeout_seconds)
        log(f"letta {health['version']}: healthy at {self.base_url}")
        return StartedServer(version, self.base_url)
