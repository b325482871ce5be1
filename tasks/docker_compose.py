"""The ``docker compose`` command line, as letta-ops runs it.

Why apart from the compose runtime: the runtime (pinning, starting a Letta service) and the
PostgreSQL client tools run inside a compose service both shell out to ``docker compose``; one
module runs it for both, so neither package imports the other. Secrets never go in argv:
whatever the compose file interpolates reaches docker through the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class ComposeCommandError(RuntimeError):
    """``docker compose`` is missing or exited non-zero."""


def compose_command(compose_file: Path, *args: str, project_name: str | None = None) -> list[str]:
    """``docker compose -f FILE [-p NAME] ARGS...`` as an argv list (global options first)."""
    command = ["docker", "compose", "-f", str(compose_file)]
    if project_name:
        command += ["-p", project_name]
    return command + list(args)


def _tail(text: str, lines: int = 20, chars: int = 2000) -> str:
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return tail[-chars:]


def run_compose(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
) -> subprocess.CompletedProcess[str]:
    """Run a ``docker compose`` argv; raise :class:`ComposeCommandError` on any failure.

    ``env`` is added to this process's environment (that is how secrets reach the compose file's
    interpolation: never through argv).
    """
    executable = shutil.which(command[0])
    if executable is None:
        raise ComposeCommandError(
            f"{command[0]!r} was not found on PATH; install Docker with the compose plugin, or "
            f"use the process runtime instead of the Docker Compose runtime."
        )
    full_env = {**os.environ, **env} if env else None
    shown = " ".join(command)
    try:
        result = subprocess.run(
            [executable, *command[1:]],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeCommandError(
            f"'{shown}' did not finish within {timeout:g} s; check the Docker engine."
        ) from exc
    except OSError as exc:
        raise ComposeCommandError(f"'{shown}' could not be started: {exc}.") from exc
    if result.returncode != 0:
        detail = _tail(result.stderr) or _tail(result.stdout) or "no output"
        raise ComposeCommandError(f"'{shown}' failed with exit code {result.returncode}:\n{detail}")
    return result
