"""Import an agent file exactly once, even when the server's answer is lost.

Why: ``POST /v1/agents/import`` can finish on the server while the client gives up (a read
timeout on a big file, a proxy that drops the connection, a 504 from a load balancer). Sending
the file again then creates a second agent with the same name and a new id: names are not
unique in Letta, so nobody can tell the two apart, and a rebuild's count check fails after the
damage is done. Here the file is imported once; when its answer is lost, the agent that answer
would have named is looked for (an agent that was not live before the import and carries the
file's name) and returned, and the file is sent again only when no such agent appears within
``settle_seconds`` (the server may still be writing it).

What stays possible: a server that finishes an import later than ``settle_seconds`` after its
answer was lost. Raise ``settle_seconds`` for servers that import slowly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .agent_file import summarize_agent_file
from .api import NOT_SENT_ERRORS, LettaAPIError, LettaClient

#: Statuses from a proxy or gateway that gave up waiting: the server may have finished.
GATEWAY_GAVE_UP = frozenset({502, 504})
#: How long to look for the agent of a lost answer before importing again (seconds).
SETTLE_SECONDS = 60.0
#: Pause between two looks (seconds).
POLL_SECONDS = 2.0


class AgentImportLost(LettaAPIError):
    """Every attempt to import the file lost its answer and no imported agent appeared."""

    def __init__(self, name: str, attempts: int, settle_seconds: float, last: LettaAPIError):
        self.method, self.path, self.status, self.detail = (
            last.method,
            last.path,
            last.status,
            last.detail,
        )
        RuntimeError.__init__(
            self,
            f"{attempts} imports of agent {name!r} lost their answers and no agent of that "
            f"name appeared within {settle_seconds:g} s of each ({last}); check the server's "
            "log, then restore that agent again.",
        )


def answer_lost(exc: LettaAPIError) -> bool:
    """The request may have been carried out, but its answer never arrived."""
    if exc.status == 0:
        return not isinstance(exc.__cause__, NOT_SENT_ERRORS)
    return exc.status in GATEWAY_GAVE_UP


def not_sent(exc: LettaAPIError) -> bool:
    """The request never reached the server: sending it again cannot duplicate anything."""
    return exc.status == 0 and isinstance(exc.__cause__, NOT_SENT_ERRORS)


def agents_named(client: LettaClient, name: str) -> list[dict]:
    """Live agents called exactly ``name`` (the server's ``name`` filter, checked here too:
    a version that ignores it lists every agent)."""
    return [a for a in client.paged("/v1/agents/", {"name": name}) if a.get("name") == name]


def find_imported(
    client: LettaClient,
    name: str,
    before: set[str],
    settle_seconds: float,
    poll_seconds: float = POLL_SECONDS,
) -> list[str]:
    """Ids of agents called ``name`` that were not live ``before``, waiting up to
    ``settle_seconds`` for one to appear; empty when none did."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            new = [a["id"] for a in agents_named(client, name) if a["id"] not in before]
        except LettaAPIError as exc:
            if not (answer_lost(exc) or not_sent(exc)):
                raise
            new = []  # the server is busy or restarting: look again
        if new or time.monotonic() >= deadline:
            return new
        time.sleep(poll_seconds)


def import_agent_once(
    client: LettaClient,
    agent_file: bytes,
    filename: str = "agent.af",
    *,
    attempts: int = 3,
    timeout: float | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    log: Callable[[str], None] = lambda _message: None,
    name: str | None = None,
    **options: object,
) -> list[str]:
    """Import ``agent_file`` (one agent) and return the new agent's ids, never creating it
    twice: a lost answer is followed by a look for the agent it created, not by a resend.

    ``timeout`` bounds one import call; ``options`` go to the import endpoint as they are.
    ``name`` is the agent's name in the file, when the caller has read it already.
    The server must not be importing the same name from elsewhere at the same time (the
    flows hold the server's lock).
    """
    name = name if name is not None else summarize_agent_file(agent_file).name
    before = {a["id"] for a in agents_named(client, name)}
    for attempt in range(1, attempts + 1):
        try:
            return list(client.import_agent(agent_file, filename, timeout=timeout, **options))
        except LettaAPIError as exc:
            if not answer_lost(exc):
                raise  # refused, or never reached the server (sent again by the client)
            log(f"import of {name!r} lost its answer ({exc}); looking for the imported agent")
            found = find_imported(client, name, before, settle_seconds, poll_seconds)
            if found:
                log(f"import of {name!r} had created {', '.join(found)}; not importing again")
                return found
            if attempt == attempts:
                raise AgentImportLost(name, attempts, settle_seconds, exc) from exc
            log(f"no agent {name!r} appeared within {settle_seconds:g} s; importing again")
    raise AssertionError("unreachable")


def import_agent_files(
    client: LettaClient, files: dict[str, str], log: Callable[[str], None] = lambda _m: None
) -> list[str]:
    """Import every file of ``{agent id in the set: path}``, in id order, each once."""
    imported: list[str] = []
    for agent_id, path in sorted(files.items()):
        data = Path(path).read_bytes()
        imported += import_agent_once(client, data, f"{agent_id}.af", log=log)
    return imported


__all__ = [
    "AgentImportLost",
    "answer_lost",
    "find_imported",
    "import_agent_files",
    "import_agent_once",
]
