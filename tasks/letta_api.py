"""The Letta REST API, as far as letta-ops needs it (httpx, sync).

Why a thin client of our own rather than the Letta SDK: the SDK follows the newest server,
and we must talk to every server version from 0.11 to 0.16 the same way. Every list is paged
(0.16.x returns 10 tools per agent by default), every call carries the password only in a
header, and errors keep the server's own message so an operator can act on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from blocks.letta_server import LettaServer

PAGE_SIZE = 100


class LettaAPIError(RuntimeError):
    """A Letta API call failed; ``status`` and ``detail`` are the server's answer."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        self.method, self.path, self.status, self.detail = method, path, status, detail
        super().__init__(f"{method} {path} answered {status}: {detail}")


class LettaClient:
    """A connection to one Letta server."""

    def __init__(self, server: LettaServer, timeout: float = 60.0, retries: int = 3) -> None:
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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, retried with backoff on connection errors, 429 and 502-504."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise LettaAPIError(method, path, 0, f"connection failed: {exc}") from exc
            else:
                if response.status_code not in (429, 502, 503, 504) or attempt == self.retries:
                    if response.status_code >= 400:
                        raise LettaAPIError(method, path, response.status_code, _detail(response))
                    return response
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def paged(
        self, path: str, params: dict[str, Any] | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[dict]:
        """Every item of a cursor-paged list (``limit`` + ``after``, ascending)."""
        after: str | None = None
        seen: set[str] = set()
        while True:
            query = {**(params or {}), "limit": page_size, "ascending": "true", "order": "asc"}
            if after:
                query["after"] = after
            page = self._json("GET", path, params=query)
            new = [item for item in page if item.get("id") not in seen]
            for item in new:
                seen.add(item["id"])
                yield item
            if len(page) < page_size or not new:
                return
            after = page[-1]["id"]

    # ------------------------------------------------------------------ endpoints

    def health(self) -> dict:
        return self._json("GET", "/v1/health/")

    def list_agents(self) -> list[dict]:
        return list(self.paged("/v1/agents/"))

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

    def import_agent(self, agent_file: bytes, filename: str = "agent.af", **options: Any) -> list:
        """Import an agent file; never lets the server append ``_copy`` to names."""
        data = {"append_copy_suffix": "false"}
        data.update(
            {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in options.items()}
        )
        result = self._json(
            "POST",
            "/v1/agents/import",
            files={"file": (filename, agent_file, "application/json")},
            data=data,
        )
        return result.get("agent_ids", result) if isinstance(result, dict) else result

    def list_agent_tools(self, agent_id: str) -> list[dict]:
        return list(self.paged(f"/v1/agents/{agent_id}/tools"))

    def list_tools(self) -> list[dict]:
        return list(self.paged("/v1/tools/"))


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
