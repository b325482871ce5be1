"""pg_dump's ``--compress`` choice: the spellings accepted, the order its sources win in, and
a Letta Database block that refuses a bad one when it is built (before any backup runs)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from letta_ops.blocks.letta_database import LettaDatabase
from letta_ops.tasks.errors import Refused
from letta_ops.tasks.postgres.dump_compression import chosen_compression, parse_compression

URI = "postgresql://letta:s3cret-pw@127.0.0.1:5432/letta"


def test_spellings_pg_dump_knows_are_normalised_and_others_refused():
    assert parse_compression(None) == "gzip:1"  # the measured default (README, bench)
    assert parse_compression("9") == "gzip:9"
    assert parse_compression("zstd:3") == "zstd:3"
    assert parse_compression(" NONE ") == "none"
    assert parse_compression("lz4") == "lz4"
    for bad, says in [
        ("bzip2", "not one pg_dump knows"),
        ("gzip:12", "must be 0-9"),
        ("zstd:0", "must be 1-22"),
        ("none:1", "not one pg_dump knows"),
        ("gzip:x", "must be 0-9"),
    ]:
        with pytest.raises(Refused, match=says):
            parse_compression(bad)


def test_the_run_wins_then_the_environment_then_the_block():
    env = {"LETTA_OPS_COMPRESS": "gzip:1"}
    assert chosen_compression("none", "zstd:3", env) == "none"
    assert chosen_compression(None, "zstd:3", env) == "gzip:1"
    assert chosen_compression(None, "zstd:3", {}) == "zstd:3"
    assert chosen_compression(None, None, {}) == "gzip:1"
    with pytest.raises(Refused, match="not one pg_dump knows"):
        chosen_compression(None, None, {"LETTA_OPS_COMPRESS": "brotli"})


def test_the_database_block_keeps_a_valid_choice_and_refuses_a_bad_one():
    assert LettaDatabase(uri=URI, compression="9").compression == "gzip:9"
    assert LettaDatabase(uri=URI).compression is None
    with pytest.raises((ValidationError, Refused), match="must be 0-9") as refused:
        LettaDatabase(uri=URI, compression="gzip:12")
    assert "s3cret-pw" not in str(refused.value)  # the URI never echoes into an error
    saved = LettaDatabase(uri=URI, compression="none")
    assert saved.for_database("scratch").compression == "none"  # every copy says the same
    # LETTA_OPS_COMPRESS is read by the backup alone (chosen_compression): a bad value never
    # stops a restore or an upgrade from building its database from the environment.
    block = LettaDatabase.from_env({"LETTA_PG_URI": URI, "LETTA_OPS_COMPRESS": "brotli"})
    assert block.compression is None
