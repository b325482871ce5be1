"""The dump's row counts are taken beside pg_dump, not before it (issue #32), and still in the
dump's own snapshot: rows committed while the dump runs are neither counted nor dumped.

PostgreSQL 18 (the session cluster), a local file store; the dump is restored with the real
``pg_restore`` and compared with the test's own SQL.
"""

from __future__ import annotations

import subprocess
import threading

import sqlalchemy as sa

from letta_ops.tasks.postgres import dump as dump_module
from letta_ops.tasks.postgres.dump import dump_to_store, tool, tool_env
from letta_ops.tasks.postgres.letta_schema import connect
from letta_ops.tasks.store.locations import open_store

ROWS = 3000
WRITTEN_DURING_DUMP = 700
DIGEST = sa.text("SELECT md5(string_agg(id || ':' || body, ',' ORDER BY id)) FROM ballast")


def test_counts_run_beside_the_dump_in_its_snapshot(make_database, tmp_path, monkeypatch):
    db = make_database("counts").model_copy(update={"extra_tables": ["ballast"]})
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("CREATE TABLE ballast (id int PRIMARY KEY, body text NOT NULL)"))
        conn.execute(
            sa.text(
                "INSERT INTO ballast SELECT i, repeat(md5(i::text), 40) "
                "FROM generate_series(1, CAST(:n AS int)) i"
            ),
            {"n": ROWS},
        )
        digest_before = conn.execute(DIGEST).scalar()

    # The counts may only start once the dump runs and more rows have been committed: so
    # they run after a concurrent commit, as they now can, and must still not see it.
    committed = threading.Event()
    counted_while_dumping: list[bool] = []
    real_counts = dump_module.counts_in_snapshot

    def counts_after_commit(conn, schema, also):
        assert committed.wait(60), "the dump never produced a byte"
        counted_while_dumping.append(True)
        return real_counts(conn, schema, also)

    def write_during_dump(_bytes: int) -> None:
        if committed.is_set():
            return
        with connect(db, autocommit=True) as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO ballast SELECT i, 'written during the dump' "
                    "FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) i"
                ),
                {"lo": ROWS + 1, "hi": ROWS + WRITTEN_DURING_DUMP},
            )
        committed.set()

    monkeypatch.setattr(dump_module, "counts_in_snapshot", counts_after_commit)
    dumped = dump_to_store(
        db, open_store(f"file://{tmp_path}"), "s/database.dump", progress=write_during_dump
    )

    assert counted_while_dumping == [True]
    assert dumped.row_counts["ballast"] == ROWS
    with connect(db) as conn:  # the live table has the new rows
        assert conn.execute(sa.text("SELECT count(*) FROM ballast")).scalar() == (
            ROWS + WRITTEN_DURING_DUMP
        )
    restored = make_database("counts_restored")
    # Not --exit-on-error: "schema public already exists" is expected; the rows are checked.
    subprocess.run(
        [tool(restored, "pg_restore"), "--no-owner"]
        + ["--dbname", restored.database_name, str(tmp_path / "s" / "database.dump")],
        env=tool_env(restored),
        check=False,
        capture_output=True,
    )
    with connect(restored) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ballast")).scalar() == ROWS
        assert conn.execute(DIGEST).scalar() == digest_before
