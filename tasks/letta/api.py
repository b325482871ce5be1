"""The Letta REST API, as far as letta-ops needs it (httpx, sync).

Why a thin client of our own rather than the Letta SDK: the SDK follows the newest server,
and we must talk to every server version from 0.11 to 0.16 the same way. Every list is paged
(0.16.x returns 10 tools per agent by default), every call carries the password only in a
header, and errors keep the server's own message so an operator can act on it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx

from .endpoint import LettaEndpoint

PAGE_SIZE = 100
#: Retried for every call: the server (or a proxy) asked us to slow down or is restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Retried for calls that are safe to repeat (attach, detach, delete): also a plain 500.
IDEMPOTENT_RETRY_STATUSES = RETRY_STATUSES | {500}
#: Retried for a POST (it creates something): only answers that say it was not done.
REFUSED_STATUSES = frozenset({429, 503})
#: Transport errors raised before the request left: safe to send again, whatever the method.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Longest single wait between retries, whatever ``Retry-After`` asks for.
MAX_BACKOFF = 30.0
#: Sent on attach/detach: 0.16.x then answers with no body instead of the whole agent state
#: (the 1.0 SDK's response shape), which makes a fleet-wide sync about twice as fast. Older
#: servers ignore it. We never read those bodies.
NO_AGENT_STATE = {"X-Stainless-Package-Version": "1.0.0"}


class LettaAPIError(RuntimeError):
    """A Letta API call failed; ``status`` and ``detail`` are the server's answer."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        self.method, self.path, self.status, self.detail = method, path, status, detail
        if status == 0:  # nothing answered: say where we looked and what to check
            super().__init__(
                f"Cannot reach the Letta server ({method} {path}: {detail}); check "
                "LETTA_BASE_URL (or the saved server block) and that the server is running."
            )
        else:
            super().__init__(f"{method} {path} answered {status}: {detail}")


class LettaClient:
    """A connection to one Letta server."""

    def __init__(self, server: LettaEndpoint, timeout: float = 60.0, retries: int = 3) -> None:
        self.server = server
        self.retries = retries
        self._http = httpx.Client(
            base_url=server.base_url, headers=server.auth_headers(), timeout=timeout
        )

    def __enter__(self) -> LettaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, retried with backoff on connection errors and ``retry_statuses``.

        The default retries only what is safe for any call (429, 502-504). Idempotent calls
        (attach, detach, delete) pass :data:`IDEMPOTENT_RETRY_STATUSES` to also retry a 500.
        A POST creates something (an agent, an import): it is sent again only when the answer
        proves it was not done (no connection, 429, 503), never after a lost answer (a read
        timeout, a dropped connection, a proxy's 502/504), which may hide a finished create;
        :func:`letta_ops.tasks.letta.agent_import.import_agent_once` looks before importing again.
        The wait doubles from 0.5 s with jitter (so parallel workers do not retry in lockstep)
        and honours a numeric ``Retry-After`` on 429/503.
        """
        if method.upper() == "POST":
            retry_statuses = retry_statuses & REFUSED_STATUSES
        delay = 0.5
        for attempt in range(self.retries + 1):
            wait = delay
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                resend = method.upper() != "POST" or isinstance(exc, NOT_SENT_ERRORS)
                if attempt == self.retries or not resend:
                    raise LettaAPIError(method, path, 0, f"{self._http.base_url}: {exc}") from exc
            else:
                if response.status_code not in retry_statuses or attempt == self.retries:
                    if response.status_code >= 400:
                        raise LettaAPIError(method, path, response.status_code, _detail(response))
                    return response
                wait = max(delay, _retry_after(response))
            time.sleep(min(wait, MAX_BACKOFF) * random.uniform(0.8, 1.2))
            delay *= 2
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def paged(
        self, path: str, params: dict[str, Any] | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[Any]:
        """Every item of a cursor-paged list (``limit`` + ``after``, ascending).

        Items are objects with an ``id`` or, for a few endpoints (the agents of a folder),
        bare id strings; the cursor is the last item's id either way.
        """
        after: str | None = None
        seen: set[str] = set()
        while True:
            query = {**(params or {}), "limit": page_size, "ascending": "true", "order": "asc"}
            if after:
                query["after"] = after
            page = self._json("GET", path, params=query)
            new = [item for item in page if _item_id(item) not in seen]
            for item in new:
                seen.add(_item_id(item))
                yield item
            if len(page) < page_size or not new:
                return
            after = _item_id(page[-1])

    # ------------------------------------------------------------------ endpoints

    def health(self) -> dict:
        return self._json("GET", "/v1/health/")

    def list_agents(
        self, tags: list[str] | None = None, match_all_tags: bool = False
    ) -> list[dict]:
        """Every agent, or those with any (``match_all_tags``: all) of ``tags``."""
        params: dict[str, Any] = {}
        if tags:
            params = {"tags": list(tags), "match_all_tags": json.dumps(match_all_tags)}
        return list(self.paged("/v1/agents/", params))

    def get_agent(self, agent_id: str) -> dict:
        return self._json("GET", f"/v1/agents/{agent_id}")

    def create_agent(self, body: dict) -> dict:
        return self._json("POST", "/v1/agents/", json=body)

    def update_agent(self, agent_id: str, changes: dict) -> dict:
        return self._json("PATCH", f"/v1/agents/{agent_id}", json=changes)

    def delete_agent(self, agent_id: str) -> None:
        self.request("DELETE", f"/v1/agents/{agent_id}")

    def export_agent(self, agent_id: str) -> bytes:
        """The agent file exactly as the server wrote it."""
        return self.request("GET", f"/v1/agents/{agent_id}/export").content

    def import_agent(
        self,
        agent_file: bytes,
        filename: str = "agent.af",
        timeout: float | None = None,
        **options: Any,
    ) -> list:
        """Import an agent file; never lets the server append ``_copy`` to names.

        Sent once when its answer is lost (see :meth:`request`); ``timeout`` (seconds)
        replaces the client's for this call. Flows import through ``import_agent_once``.
        """
        data = {"append_copy_suffix": "false"}
        data.update(
            {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in options.items()}
        )
        result = self._json(
            "POST",
            "/v1/agents/import",
            files={"file": (filename, agent_file, "application/json")},
            data=data,
            **({"timeout": timeout} if timeout is not None else {}),
        )
        return result.get("agent_ids", result) if isinstance(result, dict) else result

    def list_agent_tools(self, agent_id: str) -> list[dict]:
        return list(self.paged(f"/v1/agents/{agent_id}/tools"))

    def list_tools(self) -> list[dict]:
        return list(self.paged("/v1/tools/"))

    def create_tool(self, source_code: str, **fields: Any) -> dict:
        """Create (or, by name, update) a custom Python tool from its source code."""
        return self._json("POST", "/v1/tools/", json={"source_code": source_code, **fields})

    def attach_tool(self, agent_id: str, tool_id: str) -> None:
        """Attach a tool; attaching one that is already attached is a no-op on the server."""
        self.request(
            "PATCH",
            f"/v1/agents/{agent_id}/tools/attach/{tool_id}",
            retry_statuses=IDEMPOTENT_RETRY_STATUSES,
            headers=NO_AGENT_STATE,
        )

    def detach_tool(self, agent_id: str, tool_id: str) -> None:
        """Detach a tool; detaching one that is not attached is a no-op on the server."""
        self.request(
            "PATCH",
            f"/v1/agents/{agent_id}/tools/detach/{tool_id}",
            retry_statuses=IDEMPOTENT_RETRY_STATUSES,
            headers=NO_AGENT_STATE,
        )

    # Sources and folders are one entity (ids ``source-...``); ``/v1/folders`` is the
    # current name, ``/v1/sources`` the deprecated one. Both list the same rows.

    def list_folders(self) -> list[dict]:
        return list(self.paged("/v1/folders/"))

    def get_folder(self, folder_id: str) -> dict:
        return self._json("GET", f"/v1/folders/{folder_id}")

    def create_folder(self, body: dict) -> dict:
        """Create a folder; the server answers 409 when the name is taken (unique per org)."""
        return self._json("POST", "/v1/folders/", json=body)

    def delete_folder(self, folder_id: str) -> None:
        self.request("DELETE", f"/v1/folders/{folder_id}", retry_statuses=IDEMPOTENT_RETRY_STATUSES)

    def list_folder_agents(self, folder_id: str) -> list[str]:
        """Ids of the agents a folder is attached to (the endpoint returns bare ids)."""
        return list(self.paged(f"/v1/folders/{folder_id}/agents"))

    def list_agent_folders(self, agent_id: str) -> list[dict]:
        return list(self.paged(f"/v1/agents/{agent_id}/folders"))

    def attach_folder(self, agent_id: str, folder_id: str) -> None:
        self.request(
            "PATCH",
            f"/v1/agents/{agent_id}/folders/attach/{folder_id}",
            retry_statuses=IDEMPOTENT_RETRY_STATUSES,
            headers=NO_AGENT_STATE,
        )


def _item_id(item: Any) -> str:
    return item if isinstance(item, str) else item.get("id")


def _retry_after(response: httpx.Response) -> float:
    """Seconds a 429/503 asks us to wait (numeric ``Retry-After`` only), else 0."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return 0.0


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return json.dumps(body)[:500]


def offline_agent_body(name: str, persona: str = "p", human: str = "h") -> dict:
    """An agent-create body that needs no LLM key (model endpoints point at a closed port)."""
    return {
        "name": name,
        "llm_config": {
            "model": "gpt-4o-mini",
            "model_endpoint_type": "openai",
            "model_endpoint": "http://127.0.0.1:9/v1",
            "context_window": 8192,
        },
        "embedding_config": {
            "embedding_model": "text-embedding-3-small",
            "embedding_endpoint_type": "openai",
            "embedding_endpoint": "http://127.0.0.1:9/v1",
            "embedding_dim": 1536,
        },
        "memory_blocks": [
            {"label": "persona", "value": persona},
            {"label": "human", "value": human},
        ],
    }
