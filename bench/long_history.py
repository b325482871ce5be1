"""The long-history shape: Letta's own ``messages`` table grown to about ``--gigabytes``, the
history spread over the server's agents (issue #32: a 2 GB database, 25 agents, 800 k
messages of varied text).

Why Letta's table and not one of the bench's: the rows are then Letta's, so the backup's own
selection, its per-table counts, Letta's six indexes on ``messages`` (rebuilt by every
restore) and the ``message_seq_id`` default all take part, as on an operator's server. Each
new row copies one real message of its agent (every column Letta filled in, so the server
reads them back) with a new id, a new text and a new time.

Why "varied": the words come from a vocabulary of 512 made-up words picked by a hash, so the
text compresses about as chat does (far less than a 48-word vocabulary, far more than random
bytes): gzip's level matters on it, which is what the compression choice is measured on.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from typing import Any

import sqlalchemy as sa

from bench.run import GENERATION_BUDGET_SECONDS, GENERATION_WORKERS, log, mib, next_batch
from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.postgres.letta_schema import connect

#: Messages per statement.
HISTORY_BATCH_ROWS = 20_000
#: 512 pronounceable made-up words: 8 onsets x 8 vowels x 8 endings.
VOCABULARY = [
    a + b + c
    for a, b, c in product(
        ("b", "k", "st", "m", "pr", "l", "v", "tr"),
        ("a", "e", "i", "o", "u", "ai", "ou", "ea"),
        ("n", "rt", "ck", "ll", "sh", "m", "ng", "x"),
    )
]
#: Columns a copied message gets new values for (the rest are its template's).
_REPLACED = {"id", "sequence_id", "text", "content", "created_at", "updated_at"}


def _history_batch(copied: list[str], content_type: str, text_type: str) -> sa.TextClause:
    """One statement that adds messages ``lo``..``hi``: message g copies the first message of
    agent ``g mod agents`` and gets 12-91 words of hashed text, one second apart."""
    columns = ", ".join(f'"{c}"' for c in copied)
    template = ", ".join(f't."{c}"' for c in copied)
    return sa.text(
        f"""
        WITH w AS (SELECT CAST(:words AS text[]) AS words),
        t AS (
            SELECT DISTINCT ON (agent_id) *, dense_rank() OVER (ORDER BY agent_id) - 1 AS n
            FROM messages WHERE agent_id = ANY(CAST(:agents AS text[]))
            ORDER BY agent_id, created_at
        ),
        body AS (
            SELECT g, (
                SELECT string_agg(w.words[1 + (hashint8(g * 128 + k) & 511)], ' ')
                FROM generate_series(1, 12 + mod(g, 80)) k
            ) || ' #' || g AS txt
            FROM w, generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
        )
        INSERT INTO messages ({columns}, id, text, content, created_at, updated_at)
        SELECT {template}, 'message-' || md5(:seed || body.g::text),
               CAST(NULL AS {text_type}),
               CAST(CAST(json_build_array(json_build_object('type', 'text', 'text', body.txt))
                    AS text) AS {content_type}),
               TIMESTAMPTZ '2026-01-01' + make_interval(secs => body.g),
               TIMESTAMPTZ '2026-01-01' + make_interval(secs => body.g)
        FROM body JOIN t ON t.n = mod(body.g, :agent_count)
        """
    )


def grow_long_history(
    db: LettaDatabase, agent_ids: list[str], target_database: int
) -> dict[str, Any]:
    """Add messages to Letta's ``messages`` table, spread evenly over ``agent_ids``, until the
    database is about ``target_database`` bytes (or the generation budget is spent)."""
    started = time.perf_counter()
    seed = f"{time.time_ns()}"
    with connect(db, autocommit=True) as conn:
        kinds = dict(
            conn.execute(
                sa.text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'messages'::regclass AND attnum > 0 AND NOT attisdropped"
                )
            ).all()
        )
        before = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar()
    copied = [c for c in kinds if c not in _REPLACED]
    statement = _history_batch(copied, kinds["content"], kinds["text"])
    size_sql = sa.text("SELECT pg_database_size(current_database())")
    lock = threading.Lock()
    state = {"next": 0, "stopped_by_budget": False, "full": False}
    deadline = started + GENERATION_BUDGET_SECONDS
    params = {"words": VOCABULARY, "agents": agent_ids, "agent_count": len(agent_ids)}

    def worker() -> None:
        with connect(db, autocommit=True) as conn:
            while (batch := next_batch(state, lock, deadline, lambda: state["full"])) is not None:
                lo = batch * HISTORY_BATCH_ROWS + 1
                hi = lo + HISTORY_BATCH_ROWS - 1
                conn.execute(statement, {**params, "seed": seed, "lo": lo, "hi": hi})
                size = conn.execute(size_sql).scalar()
                with lock:
                    state["full"] = state["full"] or size >= target_database
                log(f"long history: batch {batch + 1}, database {mib(size)}")

    with ThreadPoolExecutor(GENERATION_WORKERS, thread_name_prefix="history") as pool:
        for future in [pool.submit(worker) for _ in range(GENERATION_WORKERS)]:
            future.result()
    with connect(db, autocommit=True) as conn:
        conn.execute(sa.text("VACUUM ANALYZE messages"))
        conn.execute(sa.text("CHECKPOINT"))
        messages, per_agent_min, database_bytes = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM messages), "
                "(SELECT min(c) FROM (SELECT count(*) c FROM messages "
                " WHERE agent_id = ANY(CAST(:agents AS text[])) GROUP BY agent_id) x), "
                "pg_database_size(current_database())"
            ),
            {"agents": agent_ids},
        ).one()
    seconds = time.perf_counter() - started
    log(f"long history: {messages} messages over {len(agent_ids)} agents, {mib(database_bytes)}")
    return {
        "method": "Letta's messages table: each new row a copy of its agent's first message "
        "with a new id, 12-91 words from a 512-word made-up vocabulary picked by hash, and a "
        f"new time; {HISTORY_BATCH_ROWS} per statement by {GENERATION_WORKERS} connections",
        "target_database_bytes": target_database,
        "agents": len(agent_ids),
        "messages_before": int(before),
        "messages": int(messages),
        "fewest_messages_of_an_agent": int(per_agent_min or 0),
        "database_bytes": int(database_bytes),
        "generation_seconds": round(seconds, 1),
        "stopped_by_time_budget": state["stopped_by_budget"],
        "time_budget_seconds": GENERATION_BUDGET_SECONDS,
    }
