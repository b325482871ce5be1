"""move-to-postgres at storage speed: ``python -m bench.move_ratio --seed SQLITE_DB
[--megabytes 1024 256]``.

``--seed`` is a real Letta 0.11.7 ``sqlite.db`` (a stopped server's; the e2e fixture builds one).
Each size is a copy of it grown with rows of Letta's shape (messages whose JSON content is
about 1.5 KB, archival passages with 4096-dimension sqlite-vec embeddings, as 0.11.7 pads them)
until the file is about that many MiB. On a PostgreSQL 18 + pgvector cluster of its own, with
a schema built once by 0.11.7's alembic and cloned per run (``CREATE DATABASE ... TEMPLATE``):

- **move**: :func:`letta_ops.tasks.move.row_copy.copy_all_rows` (read, convert, binary COPY,
  keys re-added, both sides' counts) in a child process, its peak RSS taken from the kernel;
- **raw COPY**: the same rows as PostgreSQL's own binary COPY files (written from the moved
  database, not timed) loaded into another clone, table by table in one transaction.

The ratio is move / raw; peak memory at each size shows whether it stays flat. Figures merge into
``bench/results.json`` under ``move_ratio``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from letta_ops.blocks.letta_database import LettaDatabase  # noqa: E402
from letta_ops.tasks.move import postgres_target as pg  # noqa: E402
from letta_ops.tasks.move.row_copy import copy_all_rows  # noqa: E402
from letta_ops.tasks.postgres.embedded import EmbeddedPostgres  # noqa: E402
from letta_ops.tasks.postgres.letta_schema import connect, create_database, quote_ident  # noqa: E402
from letta_ops.tasks.runtimes.process import migrate_database  # noqa: E402

RESULTS = Path(__file__).with_name("results.json")
VERSION = "0.11.7"
EMBEDDING_DIM = 4096  # 0.11.x pads every embedding to MAX_EMBEDDING_DIM
#: The variable carrying the target URI to the child (never its argv).
TARGET_VARIABLE = "BENCH_MOVE_TARGET_URI"


def grow(seed: Path, out: Path, megabytes: int) -> dict[str, int]:
    """A copy of ``seed`` grown with messages and passages of Letta's shape."""
    shutil.copy2(seed, out)
    conn = sqlite3.connect(out)
    rng = random.Random(42)
    template = conn.execute("SELECT * FROM messages LIMIT 1").fetchone()
    columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
    agents = [a for (a,) in conn.execute("SELECT id FROM agents")]
    org = conn.execute("SELECT id FROM organizations LIMIT 1").fetchone()[0]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    archive = f"archive-{uuid.uuid4()}"
    conn.execute(
        "INSERT INTO archives (id, name, vector_db_provider, metadata_, created_at, updated_at, "
        "is_deleted, organization_id) VALUES (?, 'bench', 'NATIVE', '{}', ?, ?, 0, ?)",
        (archive, now, now, org),
    )
    sequence = conn.execute("SELECT coalesce(max(sequence_id), 0) FROM messages").fetchone()[0]
    words = [f"w{n}" for n in range(5000)]
    added = {"messages": 0, "archival_passages": 0}
    while out.stat().st_size < megabytes * 1024 * 1024:
        rows = []
        for _ in range(2000):
            sequence += 1
            row = dict(zip(columns, template, strict=True))
            text = " ".join(rng.choices(words, k=250))
            row.update(
                id=f"message-{uuid.uuid4()}",
                sequence_id=sequence,
                agent_id=agents[sequence % len(agents)],
                role="user",
                content=json.dumps([{"type": "text", "text": text}]),
                created_at=now,
                updated_at=now,
            )
            rows.append(tuple(row[c] for c in columns))
        conn.executemany(
            f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            rows,
        )
        added["messages"] += len(rows)
        passages = []
        for _ in range(60):
            vector = [rng.uniform(-1, 1) for _ in range(1536)] + [0.0] * (EMBEDDING_DIM - 1536)
            passages.append(
                (
                    f"passage-{uuid.uuid4()}",
                    " ".join(rng.choices(words, k=120)),
                    json.dumps({"embedding_dim": 1536, "embedding_model": "bench"}),
                    "{}",
                    struct.pack(f"<{EMBEDDING_DIM}f", *vector),
                    now,
                    now,
                    org,
                    archive,
                )
            )
        conn.executemany(
            "INSERT INTO archival_passages (id, text, embedding_config, metadata_, embedding, "
            "created_at, updated_at, is_deleted, organization_id, archive_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            passages,
        )
        added["archival_passages"] += len(passages)
        conn.commit()
    conn.execute("VACUUM")
    conn.close()
    return added


def clone(template: LettaDatabase, name: str) -> LettaDatabase:
    db = template.for_database(name)
    with connect(template.for_database("postgres"), autocommit=True) as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template.database_name)}"
        )
    return db


def child(sqlite_file: Path) -> None:
    """The move alone, in a process of its own: seconds and peak RSS as JSON on stdout."""
    target = LettaDatabase.from_env({"LETTA_PG_URI": os.environ[TARGET_VARIABLE]})
    started = time.monotonic()
    result = copy_all_rows(sqlite_file, target)
    seconds = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = sum(result.postgres_counts.values())
    print(
        json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": peak_kib // 1024, "rows": rows})
    )


async def raw_copy(moved: LettaDatabase, fresh: LettaDatabase, tables: list[str], folder: Path):
    """PostgreSQL's own binary COPY of the same rows (files written untimed), timed in."""
    source = await pg.connect(moved)
    try:
        for table in tables:
            await source.copy_from_table(table, output=str(folder / table), format="binary")
    finally:
        await source.close()
    target = await pg.connect(fresh)
    try:
        started = time.monotonic()
        async with target.transaction():
            for table in tables:
                await target.copy_to_table(table, source=str(folder / table), format="binary")
        return time.monotonic() - started
    finally:
        await target.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.move_ratio")
    parser.add_argument("--seed", type=Path, help="a stopped Letta 0.11.7 server's sqlite.db")
    parser.add_argument("--megabytes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if not args.seed:
        parser.error("--seed is required")
    work = Path(tempfile.mkdtemp(prefix="bench-move-"))
    os.chmod(work, 0o755)
    cluster = EmbeddedPostgres(data_dir=work / "pg")
    cluster.start()
    figures: dict = {"date": datetime.now(UTC).isoformat(), "sizes": []}
    try:
        template = LettaDatabase(uri=cluster.uri("move_template"))
        create_database(template, with_pgvector=True)
        migrate_database(VERSION, template.letta_pg_uri())
        for megabytes in args.megabytes:
            grown = work / f"sqlite-{megabytes}.db"
            started = time.monotonic()
            added = grow(args.seed, grown, megabytes)
            print(f"{megabytes} MiB: grown in {time.monotonic() - started:.0f} s {added}")
            moved = clone(template, f"moved_{megabytes}")
            env = {**os.environ, TARGET_VARIABLE: moved.letta_pg_uri()}
            out = (
                subprocess.run(
                    [sys.executable, "-m", "bench.move_ratio", "--child", str(grown)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            move = json.loads(out)
            tables = asyncio.run(_tables_with_rows(moved))
            (work / "copy").mkdir(exist_ok=True)
            raw = asyncio.run(
                raw_copy(moved, clone(template, f"raw_{megabytes}"), tables, work / "copy")
            )
            row = {
                "megabytes": megabytes,
                "file_bytes": grown.stat().st_size,
                "rows": move["rows"],
                "move_seconds": move["seconds"],
                "raw_copy_seconds": round(raw, 2),
                "ratio": round(move["seconds"] / raw, 2),
                "move_peak_rss_mib": move["peak_rss_mib"],
            }
            print(json.dumps(row))
            figures["sizes"].append(row)
            grown.unlink()
            shutil.rmtree(work / "copy")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["move_ratio"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


async def _tables_with_rows(db: LettaDatabase) -> list[str]:
    """Tables in copy order that hold rows (the raw load follows the move's order)."""
    conn = await pg.connect(db)
    try:
        from letta_ops.tasks.move.table_order import copy_order

        tables = list(await pg.target_columns(conn, "public"))
        order = copy_order(tables, await pg.foreign_keys(conn, "public"))
        counts = await pg.row_counts(conn, "public", order.tables)
        return [t for t in order.tables if counts[t] and t != "alembic_version"]
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
