"""Real failures injected from outside letta-ops, each in an upgrade and in a rollback (#28, 3).

Nothing here is a stand-in inside letta-ops: the faults come from the world around it. A table
the target's alembic creates, made by the test beforehand; a TCP proxy between letta-ops (and
Letta) and PostgreSQL that drops every connection once enough bytes passed; the same proxy in
front of moto's S3, cut mid-upload and mid-download; the PostgreSQL cluster restarted by the
test that owns it; the new Letta killed by pid once it answers healthy. Each run must end
whole: back where it started (rolled back or undone), or refused before the stop; proven by
the tests' own oracle (every table's content digest, the agents over HTTP, the version).

Two servers carry the cells, each on a PostgreSQL 18 cluster of its own (the cells restart
it, and the proxies sit in front of it): one at 0.14.0 for the upgrades (to 0.16.2, migrate),
one upgraded once to 0.16.2 for the rollbacks (to its pre-upgrade set, 0.14.0; an agent added
since, so a rollback that was not undone shows). Each cell prints its row of the outcome table
and the digests before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.exceptions import BotoCoreError

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.flows.rollback import RollbackFailed, rollback
from letta_ops.flows.steps.upgrade_steps import UpgradeFailed
from letta_ops.flows.upgrade import upgrade
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.letta.api import offline_agent_body
from letta_ops.tasks.postgres.embedded import EmbeddedPostgres
from letta_ops.tasks.postgres.letta_schema import create_database
from letta_ops.tasks.runs import progress_events
from letta_ops.tasks.sets.catalog import list_backup_sets
from letta_ops.tasks.store.s3 import S3ObjectStore
from tests.fixtures.letta import NEW_VERSION, RunningLetta, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_execute,
    sql_table_digests,
)
from tests.fixtures.postgres import _start_cluster
from tests.fixtures.s3 import S3_TEST_ENV, make_s3_client
from tests.fixtures.step_watch import OnStep
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
MIGRATION = f"alembic upgrade to {NEW_VERSION}"
RESTORE = "restore the set's dump"
#: Faults are armed as the server stops (the step before the one they aim at, so a fast step
#: cannot pass before the watch, polling every 0.1 s, arms them) and fire on what passes next.
STOP = "stop server"
#: Where a database fault lands, by the statement passing the proxy: the last of the seven
#: migrations to 0.16.2 (``CREATE TABLE conversations``, the six before it applied in the same
#: transaction), and the data of ``messages`` in pg_restore (other tables' data already in).
INSIDE = {"upgrade": b"CREATE TABLE conversations", "rollback": b"COPY public.messages"}


@dataclass
class FaultBed:
    """A server whose database and store are reached through proxies the test controls."""

    running: RunningLetta
    cluster: EmbeddedPostgres
    pg_proxy: TcpProxy
    s3_proxy: TcpProxy
    direct: LettaDatabase  # the oracle's way in, around the proxy
    bucket: str
    s3: Any
    aws_config: str
    target_set: str | None = None

    @property
    def server(self) -> str:
        return self.running.runtime.server_name

    def env(self) -> dict[str, str]:
        """What an operator exports, with the store reached through the S3 proxy."""
        return {
            **operator_env(self.running, f"s3://{self.bucket}/backups"),
            **S3_TEST_ENV,
            "AWS_ENDPOINT_URL": self.s3_proxy.url,
            "AWS_CONFIG_FILE": self.aws_config,
            "AWS_SHARED_CREDENTIALS_FILE": self.aws_config,
        }

    def restart_postgres(self) -> None:
        """``pg_ctl stop -m fast`` then start: every session ends, the port stays."""
        self.cluster.stop()
        self.cluster.start()

    def complete_sets(self) -> list[str]:
        store = S3ObjectStore(self.s3, self.bucket, "backups")
        return [s.set_id for s in list_backup_sets(store, self.server) if s.complete]


@dataclass(frozen=True)
class Snapshot:
    version: str
    agents: dict[str, str]
    digests: dict[str, str]
    pid: int | None

    def digest(self) -> str:
        """One md5 over every table's ``ROWS:MD5``: the whole database in one word."""
        return hashlib.md5(json.dumps(self.digests, sort_keys=True).encode()).hexdigest()


def snapshot(bed: FaultBed) -> Snapshot:
    return Snapshot(
        http_version(bed.running.server.base_url),
        http_agents(bed.running.server.base_url),
        sql_table_digests(bed.direct),
        bed.running.runtime.status().get("pid"),
    )


@contextmanager
def fault_bed(name: str, start_letta, moto_server: str, agents: int) -> Iterator[FaultBed]:
    """A cluster of its own, a proxy in front of it and of moto, a fresh bucket and Letta
    ``FROM_VERSION`` (migrated here, ~20 s) with ``agents`` agents; all stopped after."""
    cluster = _start_cluster(f"letta-ops-faults-{name}-")
    pg_proxy = TcpProxy("127.0.0.1", cluster.port)
    host, port = moto_server.removeprefix("http://").split(":")
    s3_proxy = TcpProxy(host, int(port))
    running = None
    try:
        database = f"faults_{name}"
        direct = LettaDatabase(uri=cluster.uri(database))
        create_database(direct)
        proxied = LettaDatabase(
            uri=f"postgresql://{quote(cluster.superuser)}:{quote(cluster.password, safe='')}"
            f"@127.0.0.1:{pg_proxy.port}/{database}"
        )
        running = start_letta(FROM_VERSION, f"faults-{name}", database=proxied)
        with running.client() as client:
            seed_agents(client, agents, prefix=name)
        s3 = make_s3_client(moto_server)
        bucket = f"letta-ops-faults-{name}-{os.urandom(4).hex()}"
        s3.create_bucket(Bucket=bucket)
        aws_config = tempfile.NamedTemporaryFile(prefix="aws-empty-", delete=False).name
        yield FaultBed(running, cluster, pg_proxy, s3_proxy, direct, bucket, s3, aws_config)
    finally:
        if running is not None:
            running.runtime.stop()
        pg_proxy.close()
        s3_proxy.close()
        cluster.remove()


@contextmanager
def operator_shell(bed: FaultBed) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        for name, value in bed.env().items():
            env.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def upgrade_bed(start_letta, moto_server, prefect_harness) -> Iterator[FaultBed]:
    """Letta 0.14.0 with 4 agents: every upgrade cell starts (and must end) here."""
    with fault_bed("up", start_letta, moto_server, 4) as bed:
        yield bed


@pytest.fixture(scope="module")
def rollback_bed(start_letta, moto_server, prefect_harness) -> Iterator[FaultBed]:
    """Letta 0.14.0 with 4 agents upgraded to 0.16.2, then one more agent: every rollback cell
    rolls back to the pre-upgrade set and must end here (0.16.2, five agents)."""
    with fault_bed("rb", start_letta, moto_server, 4) as bed:
        with operator_shell(bed):
            done = upgrade(NEW_VERSION, strategy="migrate", lock_timeout_seconds=30)
        assert done.outcome == "succeeded", done
        bed.target_set = done.backup_set
        with bed.running.client() as client:
            client.create_agent(offline_agent_body("rb-added-on-0162"))
        yield bed


@pytest.fixture
def bed(request: pytest.FixtureRequest) -> Iterator[FaultBed]:
    """The bed of the command the cell runs, with the operator's environment set."""
    chosen = request.getfixturevalue(f"{request.node.callspec.params['command']}_bed")
    with operator_shell(chosen):
        yield chosen


def run_command(bed: FaultBed, command: str) -> Any:
    if command == "upgrade":
        return upgrade(NEW_VERSION, strategy="migrate", lock_timeout_seconds=30)
    return rollback(backup_set=bed.target_set, lock_timeout_seconds=30)


def ends_whole(
    bed: FaultBed,
    fault: str,
    command: str,
    expected: type[BaseException],
    capsys: pytest.CaptureFixture,
    match: str,
) -> tuple[BaseException, Snapshot, Snapshot]:
    """Run ``command`` under the armed fault; it must raise ``expected`` (``match``) and leave
    the server exactly as before: version, agents, every table's content. Prints the row."""
    before = snapshot(bed)
    started = time.monotonic()
    with pytest.raises(expected, match=match) as failure:
        run_command(bed, command)
    seconds = round(time.monotonic() - started, 1)
    after = snapshot(bed)
    differences = digest_differences(before.digests, after.digests)
    with capsys.disabled():
        outcome = " ".join(str(failure.value).split())[:360]
        print(
            f"\n| {fault} | {command} | {type(failure.value).__name__}: {outcome} "
            f"| {'yes' if not differences else 'NO'} | {seconds} |"
            f"\n  digest before {before.digest()} after {after.digest()} "
            f"(agents {before.digests.get('agents')} -> {after.digests.get('agents')}, "
            f"messages {before.digests.get('messages')} -> {after.digests.get('messages')}); "
            f"version {before.version} -> {after.version}; pid {before.pid} -> {after.pid}"
        )
    assert differences == {}
    assert after.version == before.version
    assert after.agents == before.agents
    return failure.value, before, after


COMMANDS = pytest.mark.parametrize("command", ["upgrade", "rollback"])
UNDONE = {
    "upgrade": f"rollback restored Letta {FROM_VERSION}",
    "rollback": f"the undo restored Letta {NEW_VERSION}",
}
FAILED = {"upgrade": UpgradeFailed, "rollback": RollbackFailed}


# --------------------------------------------------------------------------- the cells


@COMMANDS
def test_a_conflicting_object(bed, command, capsys):
    """Upgrade: a table named like one the target's alembic creates (``conversations``, in
    the last of seven migrations, all in one transaction): the migration fails halfway and
    the upgrade rolls back. Rollback: an operator's view over Letta's ``agents``, which
    emptying Letta's tables would take with them."""
    if command == "upgrade":
        made, match = "CREATE TABLE conversations (id text PRIMARY KEY)", UNDONE["upgrade"]
        expected: type[BaseException] = UpgradeFailed
        unmade = "DROP TABLE conversations"  # 0.14.0 has none: the test's own
    else:
        made = "CREATE VIEW agent_names AS SELECT id, name FROM agents"
        match, expected = "would also drop view public.agent_names.*nothing was stopped", Refused
        unmade = "DROP VIEW agent_names"
    sql_execute(bed.direct, made)
    try:
        error, before, after = ends_whole(
            bed, "a. conflicting object", command, expected, capsys, match
        )
    finally:
        sql_execute(bed.direct, unmade)
    if command == "upgrade":
        assert f"at step {MIGRATION}" in str(error) and "already exists" in str(error)
    else:  # refused before the stop: the same process still serves
        assert after.pid == before.pid


@COMMANDS
def test_b_database_connection_cut(bed, command, capsys):
    """Every database connection dropped by the proxy as the statement of ``INSIDE`` passes:
    inside the target's alembic (upgrade), inside pg_restore of the set (rollback); the proxy
    accepts again at once, as after a network blip, so the undo can reach the database."""
    step = MIGRATION if command == "upgrade" else RESTORE
    proxy = bed.pg_proxy
    watch = OnStep(bed.server, STOP, lambda: proxy.when_relayed(0, proxy.blip, INSIDE[command]))
    try:
        error, _, _ = ends_whole(
            bed, "b. database cut", command, FAILED[command], capsys, UNDONE[command]
        )
    finally:
        proxy.disarm()
        assert watch.stop()
    assert proxy.fired_at is not None
    assert f"at step {step}" in str(error)


@COMMANDS
def test_c_store_unreachable(bed, command, capsys):
    """The S3 proxy cut and refusing: in the upgrade's safety backup as the dump's upload
    streams (refused before the stop: the server never stopped); in the rollback's download
    of the set once 32 kB passed, until the undo begins (then the store is back)."""
    proxy = bed.s3_proxy
    if command == "upgrade":
        sets_before = bed.complete_sets()

        class CutMidUpload:
            def start(self, label: str, total: int | None, unit: str) -> None:
                pass

            def advance(self, label: str, amount: int = 1) -> None:
                if label == "upload pg_dump" and not proxy._cut:
                    proxy.cut()

            def finish(self, label: str) -> None:
                pass

        progress_events.install(CutMidUpload())
        try:
            _, before, after = ends_whole(
                bed, "c. store cut mid-upload", command, BotoCoreError, capsys, "Connection was"
            )
        finally:
            progress_events.install(None)
            proxy.resume()
        assert after.pid == before.pid  # never stopped
        assert bed.complete_sets() == sets_before  # nothing half-written offered
        return

    def mid_download() -> None:  # 32 kB after the request for the set's dump (146 kB)
        proxy.when_relayed(32768, proxy.cut)

    cut = OnStep(bed.server, STOP, lambda: proxy.when_relayed(0, mid_download, b"database.dump"))
    back = OnStep(bed.server, "undo: restore the safety set", proxy.resume)
    try:
        error, _, _ = ends_whole(
            bed, "c. store cut mid-download", command, RollbackFailed, capsys, UNDONE[command]
        )
    finally:
        proxy.resume()  # whatever happened: the next cells need the store
        proxy.disarm()
        watched = (cut.stop(), back.stop())
    assert watched == (True, True) and f"at step {RESTORE}" in str(error)


@COMMANDS
def test_d_postgres_restarted(bed, command, capsys, caplog):
    """The cluster restarted (fast shutdown, start) as the statement of ``INSIDE`` passes
    the database proxy: inside the target's alembic (upgrade), inside pg_restore of the set
    (rollback). The undo waits for PostgreSQL to take sessions again."""
    step = MIGRATION if command == "upgrade" else RESTORE
    proxy = bed.pg_proxy
    watch = OnStep(
        bed.server, STOP, lambda: proxy.when_relayed(0, bed.restart_postgres, INSIDE[command])
    )
    try:
        error, _, _ = ends_whole(
            bed, "d. PostgreSQL restarted", command, FAILED[command], capsys, UNDONE[command]
        )
    finally:
        proxy.disarm()
        assert watch.stop()
    assert f"at step {step}" in str(error)
    waits = [r.getMessage() for r in caplog.records if "for PostgreSQL to take" in r.getMessage()]
    with capsys.disabled():  # whether the undo began before PostgreSQL was back (timing)
        print(f"  the undo waited for PostgreSQL: {waits[:1] or 'no, it was back already'}")


def kill_once_healthy(bed: FaultBed, version: str, killed: list[int]) -> Callable[[], None]:
    """kill -9 of the server process letta-ops just started, as soon as its /v1/health/
    answers ``version`` (the pid from the runtime's pid file, written before the wait)."""

    def action() -> None:
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=bed.running.server.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                try:
                    answer = client.get("/v1/health/").json()
                except (httpx.HTTPError, ValueError):
                    answer = {}
                pid = bed.running.runtime.status().get("pid")
                if answer.get("version") == version and pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.02)
        raise AssertionError(f"Letta {version} never answered healthy")

    return action


@COMMANDS
def test_e_new_letta_crashes_after_first_healthy_answer(bed, command, capsys):
    """The version the command starts is killed (kill -9 by pid) at its first healthy
    answer: the upgrade rolls back, the rollback undoes itself."""
    version = NEW_VERSION if command == "upgrade" else FROM_VERSION
    killed: list[int] = []
    watch = OnStep(bed.server, f"start {version}", kill_once_healthy(bed, version, killed))
    try:
        _, _, after = ends_whole(
            bed, "e. new Letta crashes", command, FAILED[command], capsys, UNDONE[command]
        )
    finally:
        assert watch.stop()
    assert len(killed) == 1 and after.pid != killed[0]


def test_b_pg_restore_cut_in_an_upgrades_own_rollback(upgrade_bed, capsys):
    """The one pg_restore an upgrade runs is its automatic rollback's: the migration fails
    on a conflicting table (a.), then the rollback's pg_restore loses its connection inside
    ``COPY public.messages`` (b.): two faults in one run."""
    bed = upgrade_bed
    proxy = bed.pg_proxy
    sql_execute(bed.direct, "CREATE TABLE conversations (id text PRIMARY KEY)")
    watch = OnStep(  # alembic sends no COPY: this lands in the rollback's pg_restore
        bed.server, MIGRATION, lambda: proxy.when_relayed(0, proxy.blip, INSIDE["rollback"])
    )
    try:
        with operator_shell(bed):
            ends_whole(
                bed,
                "a.+b. migration conflict, then the rollback's pg_restore cut",
                "upgrade",
                UpgradeFailed,
                capsys,
                UNDONE["upgrade"],
            )
    finally:
        proxy.disarm()
        sql_execute(bed.direct, "DROP TABLE IF EXISTS conversations")
        assert watch.stop()
    assert proxy.fired_at is not None
