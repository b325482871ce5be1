"""Random kill points: ``kill -9`` of a destructive run's process group at a seeded random
moment, then ``recover`` twice; the server must be at one end, exactly.

Why: ``tests/test_recover_e2e.py`` kills each run at a journal step a test author chose; a
kill can land anywhere else (while the command starts, between two statements of a step,
as a child process starts). Here the moment is drawn uniformly over the run's span, measured
by an uninterrupted run of the same kind in this session (the first upgrade and a first
restore run whole; a kind not yet measured draws over a bound, 1.5 times the longest span so
far, and a run the kill missed measures it), and each trial asserts:

- the first ``recover`` ends 0 (recovered, or nothing to recover when the kill landed before
  the journal began or after it finished); the second finds nothing (idempotent);
- the server answers at the version of one end of the run, and its database equals that end
  exactly by the tests' own oracle (every row of every Letta table, digested in primary-key
  order): the state before the run, or where it was going (a migrate upgrade: the tables an
  uninterrupted migrate produced; a rollback: the set's; a rebuild, whose import gives new ids:
  every agent's messages and memory blocks as before);
- the next destructive run starts at once (``--wait 0``): no slot is left held.

The runs: ``upgrade`` (migrate and rebuild), ``rollback``, ``restore --force`` onto a second
database (``recover`` of that target demands the same restore be rerun, then the rerun must
start at once and leave the set's content exactly), and ``recover`` itself (killed while it
recovers a killed upgrade or rollback). The seed is printed; ``LETTA_OPS_FUZZ_SEED`` replays
its draws, ``LETTA_OPS_FUZZ_TRIALS`` sets how many runs are killed (``make fuzz N=...``).
PostgreSQL 18, superuser, Letta 0.14.0 <-> 0.16.2, the session's Prefect server.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.audit.store import AuditStore
from letta_ops.tasks.runs.journal import unfinished_runs
from letta_ops.tasks.server_naming import sanitize_server_name
from tests.fixtures.fuzz_runs import (
    SEED_ENV,
    TRIALS_ENV,
    TimedRun,
    fuzz_seed,
    fuzz_trials,
    run_cli,
)
from tests.fixtures.letta import NEW_VERSION, operator_env, seed_agents
from tests.fixtures.oracle import (
    digest_differences,
    http_agents,
    http_version,
    sql_agent_contents,
    sql_table_digests,
)

pytestmark = pytest.mark.e2e

FROM_VERSION = "0.14.0"
#: Tables 0.16.2 writes as it first starts on a migrated database, with fresh ids and times
#: (its providers and their models, its new base tools): two migrations of the same data
#: differ there, in content, never in row count (found by seed 20261207, trial 5).
WRITTEN_BY_THE_TARGETS_FIRST_START = ("providers", "provider_models", "tools")


@dataclass
class FuzzBench:
    """The server under test, the restore target beside it, and the ends runs may reach."""

    base_url: str
    server: str
    db: LettaDatabase
    target: LettaDatabase
    target_env: dict[str, str]
    target_uri: str
    from_digests: dict[str, str]
    from_contents: dict
    agents: dict[str, str]
    #: The tables as an uninterrupted migrate upgrade left them (the forward end).
    to_digests: dict[str, str] = field(default_factory=dict)
    #: A set taken at FROM_VERSION (a pre-upgrade set): what ``restore`` puts on the target.
    set_at_from: str = ""
    #: Seconds an uninterrupted run of each kind took (``recover``: one that recovered).
    spans: dict[str, float] = field(default_factory=dict)
    #: The last run's own seconds, and whether it ran to its end (then: its span).
    last_run: float = 0.0
    last_ended: bool = False
    rows: list[str] = field(default_factory=list)
    #: Prints past pytest's capture, so a failing session still shows the trials before it.
    say: Callable[[str], None] = print

    def note(self, row: str) -> None:
        self.rows.append(row)
        self.say(row)


def _version(base_url: str) -> str | None:
    try:
        return http_version(base_url)
    except Exception:  # noqa: BLE001 - down is an answer
        return None


def _open_journals(server: str) -> int:
    """Journals of ``server`` begun and not finished (the tests read the audit store)."""
    return len(unfinished_runs(AuditStore.from_env(), server))


def _recover_twice(bench: FuzzBench, where: str) -> tuple[dict, TimedRun]:
    """``recover`` twice: the first ends 0 and recovers exactly when the kill left a journal
    open; the second finds nothing (idempotent)."""
    interrupted = _open_journals(bench.server)
    first = run_cli("recover", "--json")
    assert first.returncode == 0, f"{where}: {first.describe()}"
    report = first.report()
    expected = "recovered" if interrupted else "nothing to recover"
    assert report["outcome"] == expected, (where, interrupted, report)
    second = run_cli("recover", "--json")
    assert second.returncode == 0, f"{where}: {second.describe()}"
    assert second.report()["outcome"] == "nothing to recover", (where, second.report())
    return report, first


def _assert_upgrade_end(bench: FuzzBench, strategy: str, before: dict, where: str) -> str:
    """The server is at FROM with the tables as before, or at the target with its end."""
    version = _version(bench.base_url)
    assert version in {FROM_VERSION, NEW_VERSION}, f"{where}: the server answers {version}"
    if version == FROM_VERSION:
        assert digest_differences(before, sql_table_digests(bench.db)) == {}, where
        assert http_agents(bench.base_url) == bench.agents, where
    elif strategy == "migrate":
        differences = digest_differences(bench.to_digests, sql_table_digests(bench.db))
        for table in WRITTEN_BY_THE_TARGETS_FIRST_START:
            if table in differences:  # the same rows, by count; their ids and times are new
                reference, now = differences.pop(table)
                assert reference.split(":")[0] == now.split(":")[0], (where, table)
        assert differences == {}, where
    else:  # an import gives new ids: each agent's messages and memory blocks came across
        carried = {n: c.carried() for n, c in bench.from_contents.items()}
        assert {n: c.carried() for n, c in sql_agent_contents(bench.db).items()} == carried, where
        assert sorted(http_agents(bench.base_url).values()) == sorted(bench.agents.values())
    return version


def _upgrade_run(strategy: str, kill_after: float | None) -> TimedRun:
    # upgrade waits 0 s for the lock by default: a slot left held refuses it at once.
    args = ("upgrade", "--to", NEW_VERSION, "--yes", "--strategy", strategy, "--json")
    return run_cli(*args, kill_after=kill_after)


def _rollback_run(kill_after: float | None) -> TimedRun:
    return run_cli("rollback", "--yes", "--wait", "0", "--json", kill_after=kill_after)


def _finished(bench: FuzzBench, run: TimedRun, where: str) -> None:
    """A run the kill did not reach must have succeeded."""
    bench.last_run, bench.last_ended = run.seconds, not run.killed
    if not run.killed:
        assert run.returncode == 0, f"{where}: {run.describe()}"


def trial_upgrade(bench: FuzzBench, strategy: str, kill_after: float | None, where: str) -> str:
    before = sql_table_digests(bench.db)
    run = _upgrade_run(strategy, kill_after)
    _finished(bench, run, where)
    report, first = _recover_twice(bench, where)
    _note_recover_span(bench, report, first)
    return f"{_outcome(run, report)} -> {_assert_upgrade_end(bench, strategy, before, where)}"


def _assert_rollback_end(bench: FuzzBench, before: dict, where: str) -> str:
    version = _version(bench.base_url)
    assert version in {FROM_VERSION, NEW_VERSION}, f"{where}: the server answers {version}"
    end = before if version == NEW_VERSION else bench.from_digests  # as before, or the set's
    assert digest_differences(end, sql_table_digests(bench.db)) == {}, where
    if version == FROM_VERSION:
        assert http_agents(bench.base_url) == bench.agents, where
    return version


def trial_rollback(bench: FuzzBench, kill_after: float | None, where: str) -> str:
    before = sql_table_digests(bench.db)
    run = _rollback_run(kill_after)
    _finished(bench, run, where)
    report, first = _recover_twice(bench, where)
    _note_recover_span(bench, report, first)
    return f"{_outcome(run, report)} -> {_assert_rollback_end(bench, before, where)}"


def trial_recover(bench: FuzzBench, rng: random.Random, where: str) -> str:
    """Kill an upgrade (at FROM) or a rollback (at the target) at a random moment, then kill
    the ``recover`` that takes the server out of it, then ``recover`` twice."""
    at_from = _version(bench.base_url) == FROM_VERSION
    inner = "upgrade-migrate" if at_from else "rollback"
    inner_at = rng.random() * _span(bench, inner)[0]
    recover_at = rng.random() * bench.spans["recover"]
    where += f" (the {inner} killed at {inner_at:.1f} s, recover at {recover_at:.1f} s)"
    before = sql_table_digests(bench.db)
    run = _upgrade_run("migrate", inner_at) if at_from else _rollback_run(inner_at)
    _finished(bench, run, where)
    interrupted = run_cli("recover", "--json", kill_after=recover_at)
    if not interrupted.killed:
        assert interrupted.returncode == 0, f"{where}: {interrupted.describe()}"
    report, _ = _recover_twice(bench, where)
    end = (
        _assert_upgrade_end(bench, "migrate", before, where)
        if at_from
        else _assert_rollback_end(bench, before, where)
    )
    killed = "recover killed" if interrupted.killed else "recover ended"
    return f"{_outcome(run, report)}, {killed} -> {end}"


def trial_restore(bench: FuzzBench, kill_after: float | None, where: str) -> str:
    """``restore --force`` onto the second database, killed; ``recover`` of that target
    demands the rerun (twice the same answer); the rerun starts at once and leaves the set."""
    before = sql_table_digests(bench.target)
    args = ("restore", bench.set_at_from, "--database", bench.target_uri, "--force", "--yes")
    # The restore runs as the operator's shell does (pointed at the live server); recover is
    # pointed at the target, the server name the restore journals under.
    password = {"PGPASSWORD": bench.target_env["PGPASSWORD"]}
    run = run_cli(*args, "--wait", "0", "--json", env=password, kill_after=kill_after)
    _finished(bench, run, where)
    interrupted = _open_journals(bench.target_env["LETTA_OPS_SERVER_NAME"])
    answers = [run_cli("recover", "--json", env=bench.target_env) for _ in range(2)]
    outcomes = {(a.returncode, a.report().get("outcome", a.report().get("error"))) for a in answers}
    assert len(outcomes) == 1, f"{where}: recover answered differently: {outcomes}"
    [(code, said)] = outcomes
    rerun = code != 0
    assert rerun == bool(interrupted), (where, interrupted, said)
    if rerun:  # an interrupted restore: only its operator can rerun it (the password)
        assert "restore" in said and "--force" in said, (where, said)
    else:
        assert said == "nothing to recover", (where, said)
    # The live copy is replaced only once the incoming one is complete (recreate mode).
    now = sql_table_digests(bench.target)
    assert now in (before, bench.from_digests), (where, digest_differences(before, now))
    again = run_cli(*args, "--wait", "0", "--json", env=password)
    assert again.returncode == 0, f"{where}: the rerun did not start at once: {again.describe()}"
    assert digest_differences(bench.from_digests, sql_table_digests(bench.target)) == {}, where
    after = run_cli("recover", "--json", env=bench.target_env)
    assert after.returncode == 0 and after.report()["outcome"] == "nothing to recover", where
    return f"{'killed' if run.killed else 'ended'}, recover: {said[:40]}; rerun -> the set"


def _note_recover_span(bench: FuzzBench, report: dict, first: TimedRun) -> None:
    if report["outcome"] == "recovered":
        bench.spans["recover"] = first.seconds


def _outcome(run: TimedRun, report: dict) -> str:
    plan = report.get("plan") or {}
    what = f"{report['outcome']}"
    if plan:
        what += f" ({plan['action']} after '{plan['interrupted_at']}')"
    return f"{'killed' if run.killed else f'ended {run.returncode}'}, {what}"


def _choose(bench: FuzzBench, rng: random.Random) -> str:
    """A kind of run that can start from where the server is."""
    at_from = _version(bench.base_url) == FROM_VERSION
    kinds = (
        ["upgrade-migrate", "upgrade-rebuild", "restore"] if at_from else ["rollback", "restore"]
    )
    if "recover" in bench.spans:
        kinds.append("recover")
    return rng.choice(kinds)


def _run_kind(bench: FuzzBench, kind: str, rng: random.Random, kill_after, where: str) -> str:
    runs: dict[str, Callable[[], str]] = {
        "upgrade-migrate": lambda: trial_upgrade(bench, "migrate", kill_after, where),
        "upgrade-rebuild": lambda: trial_upgrade(bench, "rebuild", kill_after, where),
        "rollback": lambda: trial_rollback(bench, kill_after, where),
        "restore": lambda: trial_restore(bench, kill_after, where),
        "recover": lambda: trial_recover(bench, rng, where),
    }
    return runs[kind]()


#: A kind not yet run to its end in this session draws its moment over this many times the
#: longest span measured so far: a kill that lands after the run's end is a trial too (of an
#: uninterrupted run), and that run's own time becomes the kind's span.
UNMEASURED_MARGIN = 1.5


def _span(bench: FuzzBench, kind: str) -> tuple[float, bool]:
    """The span a kill moment of ``kind`` is drawn over, and whether it was measured."""
    if kind in bench.spans:
        return bench.spans[kind], True
    return round(UNMEASURED_MARGIN * max(bench.spans.values()), 1), False


def test_kill_9_at_random_moments_then_recover_twice(
    start_letta, letta_template, s3_env, s3_bucket, monkeypatch, prefect_harness, capsys
):
    seed, trials = fuzz_seed(), fuzz_trials()

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    say(f"\nfuzz: {SEED_ENV}={seed} {TRIALS_ENV}={trials}")
    rng = random.Random(seed)
    running = start_letta(FROM_VERSION, "fuzz")
    with running.client() as client:
        seed_agents(client, 3, prefix="fuzz")
    _, bucket, _ = s3_bucket
    for name, value in operator_env(running, f"s3://{bucket}/backups").items():
        monkeypatch.setenv(name, value)
    target = letta_template(FROM_VERSION, "fuzz_target")  # holds tables: --force needed
    parts = target.parts
    target_uri = f"postgresql://{parts['user']}@127.0.0.1:{parts['port']}/{parts['database']}"
    target_name = sanitize_server_name(f"db-127.0.0.1-{parts['port']}-{parts['database']}")
    target_env = {
        "PGPASSWORD": str(parts["password"]),
        "LETTA_OPS_SERVER_NAME": target_name,
        "LETTA_PG_URI": target.letta_pg_uri(),
    }
    base_url, db = running.server.base_url, running.database
    bench = FuzzBench(
        base_url=base_url,
        server=running.runtime.server_name,
        db=db,
        target=target,
        target_env=target_env,
        target_uri=target_uri,
        from_digests=sql_table_digests(db),
        from_contents=sql_agent_contents(db),
        agents=http_agents(base_url),
        say=say,
    )

    # The forward end of a migrate upgrade, and its span, from one uninterrupted upgrade.
    upgraded = _upgrade_run("migrate", None)
    assert upgraded.returncode == 0, upgraded.describe()
    bench.spans["upgrade-migrate"] = upgraded.seconds
    bench.set_at_from = upgraded.report()["backup_set"]
    assert http_version(base_url) == NEW_VERSION
    bench.to_digests = sql_table_digests(db)
    bench.note(f"  measure upgrade-migrate  span {bench.spans['upgrade-migrate']:6.1f} s")
    # And of restore --force (cheap, and eligible from either end): so the first trials, at
    # the target, draw over a measured span rather than a bound.
    outcome = trial_restore(bench, None, f"seed {seed}: measuring restore")
    bench.spans["restore"] = bench.last_run
    bench.note(f"  measure restore          span {bench.spans['restore']:6.1f} s  {outcome}")

    for trial in range(1, trials + 1):
        kind = _choose(bench, rng)
        span, measured = _span(bench, kind)
        kill_after = rng.random() * span
        where = f"seed {seed}, trial {trial}: {kind} killed at {kill_after:.1f} s of {span:.1f} s"
        outcome = _run_kind(bench, kind, rng, kill_after, where)
        if kind != "recover" and bench.last_ended:
            bench.spans[kind] = bench.last_run  # it ran to its end: its span, measured
        bound = "" if measured else " (bound)"
        bench.note(
            f"  trial {trial:2d} {kind:16s} kill {kill_after:6.1f}/{span:6.1f} s{bound}  {outcome}"
        )

    # The next destructive run starts at once after the last trial too.
    last = run_cli("repair-sequences", "--wait", "0", "--json")
    assert last.returncode == 0, f"seed {seed}: {last.describe()}"
    say(f"fuzz: {SEED_ENV}={seed}: {trials} trials passed")
