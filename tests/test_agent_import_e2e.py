"""An import whose answer is lost creates exactly one agent (issue #29, Tests).

A real Letta 0.16.2 behind a loopback proxy that loses answers on purpose
(``tests/fixtures/lossy_http_proxy.py``): the server really imports (or really never sees) the
file while the client sees a dropped connection or its own timeout. The agents that result are
counted in the server's database by the test's own SQL, not through the API under test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from letta_ops.blocks.letta_server import LettaServer
from letta_ops.tasks.letta.agent_file import rename_agent_file
from letta_ops.tasks.letta.agent_import import import_agent_once
from letta_ops.tasks.letta.api import LettaAPIError, LettaClient, offline_agent_body
from letta_ops.tasks.postgres.letta_schema import connect
from tests.fixtures.letta import NEW_VERSION
from tests.fixtures.lossy_http_proxy import LossyHttpProxy

pytestmark = pytest.mark.e2e

IMPORT = "/v1/agents/import"


@pytest.fixture(scope="module")
def letta(start_letta):
    return start_letta(NEW_VERSION, "agent-import")


@pytest.fixture(scope="module")
def agent_file(letta) -> bytes:
    """One agent's file, exported by the server it will be imported back into."""
    with letta.client() as client:
        agent = client.create_agent(offline_agent_body("import-source"))
        return client.export_agent(agent["id"])


@pytest.fixture
def proxy(letta) -> Iterator[LossyHttpProxy]:
    lossy = LossyHttpProxy(letta.server.base_url)
    yield lossy
    lossy.close()


def through(proxy: LossyHttpProxy, timeout: float = 60.0) -> LettaClient:
    return LettaClient(LettaServer(name="behind-proxy", base_url=proxy.url), timeout=timeout)


def ids_named(database, name: str) -> list[str]:
    """Agents of that name in the server's database: what really exists, whatever the API said."""
    with connect(database) as conn:
        rows = conn.execute(sa.text("SELECT id FROM agents WHERE name = :n"), {"n": name}).all()
    return sorted(r[0] for r in rows)


def fresh_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:6]}"


def test_a_lost_answer_is_not_sent_again(letta, agent_file, proxy):
    """The proxy loses answers after Letta did the work, and the client does not resend a
    create whose answer it lost (before #29 it did, and each resend was another agent)."""
    imported, created = fresh_name("lost-import"), fresh_name("lost-create")
    with through(proxy) as client:
        proxy.arm("POST", IMPORT, "lose_answer")
        with pytest.raises(LettaAPIError) as lost:
            client.import_agent(rename_agent_file(agent_file, imported))
        assert lost.value.status == 0
        proxy.arm("POST", "/v1/agents/", "lose_answer")
        with pytest.raises(LettaAPIError):
            client.create_agent(offline_agent_body(created))
    assert len(ids_named(letta.database, imported)) == 1  # the server did import it
    assert len(ids_named(letta.database, created)) == 1
    assert [s.action for s in proxy.requests_to("POST", "/v1/agents/")] == ["lose_answer"] * 2


def test_import_once_returns_the_agent_a_lost_answer_created(letta, agent_file, proxy):
    name, logs = fresh_name("once"), []
    proxy.arm("POST", IMPORT, "lose_answer")
    with through(proxy) as client:
        ids = import_agent_once(
            client,
            rename_agent_file(agent_file, name),
            settle_seconds=30,
            poll_seconds=0.5,
            log=logs.append,
        )
    assert ids == ids_named(letta.database, name) and len(ids) == 1
    assert [s.action for s in proxy.requests_to("POST", IMPORT)] == ["lose_answer"]
    assert any("lost its answer" in m for m in logs) and any("not importing" in m for m in logs)


def test_import_once_waits_for_an_import_still_under_way(letta, agent_file, proxy):
    """The client times out (1 s) before the server even starts (the proxy holds the file
    4 s): the agent is not there at the first look, and must be waited for, not re-imported."""
    name = fresh_name("late")
    proxy.arm("POST", IMPORT, "hold", seconds=4)
    started = time.monotonic()
    with through(proxy, timeout=1.0) as client:
        ids = import_agent_once(
            client, rename_agent_file(agent_file, name), settle_seconds=60, poll_seconds=0.5
        )
    assert time.monotonic() - started >= 4  # found only once the held import had landed
    assert ids == ids_named(letta.database, name) and len(ids) == 1
    assert [s.action for s in proxy.requests_to("POST", IMPORT)] == ["hold"]


def test_import_once_imports_again_when_the_first_never_arrived(letta, agent_file, proxy):
    name, logs = fresh_name("again"), []
    proxy.arm("POST", IMPORT, "swallow")
    with through(proxy) as client:
        ids = import_agent_once(
            client,
            rename_agent_file(agent_file, name),
            settle_seconds=3,
            poll_seconds=0.5,
            log=logs.append,
        )
    assert ids == ids_named(letta.database, name) and len(ids) == 1
    sent = proxy.requests_to("POST", IMPORT)
    assert [(s.action, s.status) for s in sent] == [("swallow", None), ("forwarded", 200)]
    assert any("importing again" in m for m in logs)
