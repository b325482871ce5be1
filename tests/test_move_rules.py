"""The move's pure rules: SQLite values into PostgreSQL's types, and the copy order."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from letta_ops.tasks.move.table_order import ForeignKey, copy_order
from letta_ops.tasks.move.value_conversion import (
    UnknownColumnType,
    converter_for,
    decode_vector,
    encode_vector,
)


def test_booleans_from_sqlite_integers_and_text():
    to_bool = converter_for("bool")
    assert [to_bool(v) for v in (0, 1, "true", "F")] == [False, True, True, False]
    with pytest.raises(ValueError):
        to_bool(2)


def test_json_text_is_kept_byte_for_byte_and_checked():
    to_json = converter_for("json")
    text = '{"b": 1,  "a": [1.50, "é"]}'
    assert to_json(text) == text
    assert converter_for("jsonb")(7) == "7"
    with pytest.raises(ValueError):
        to_json("{not json")


def test_sqlalchemy_sqlite_timestamps_become_utc_instants():
    to_ts = converter_for("timestamptz")
    assert to_ts("2026-12-07 16:46:01.123456") == datetime(
        2026, 12, 7, 16, 46, 1, 123456, tzinfo=UTC
    )
    assert to_ts("2026-12-07T18:46:01+02:00") == datetime(2026, 12, 7, 16, 46, 1, tzinfo=UTC)
    assert converter_for("timestamp")("2026-12-07 16:46:01") == datetime(2026, 12, 7, 16, 46, 1)


def test_integers_refuse_to_round():
    assert converter_for("int8")(2.0) == 2
    with pytest.raises(ValueError):
        converter_for("int4")(2.5)


def test_sqlite_vec_blob_to_pgvector_binary_and_back():
    floats = [0.5, -1.25, 3.0]
    blob = struct.pack("<3f", *floats)  # sqlite_vec.serialize_float32
    as_list = converter_for("vector")(blob)
    assert as_list == floats
    assert converter_for("vector")("[0.5, -1.25, 3.0]") == floats
    wire = encode_vector(as_list)
    assert wire[:4] == b"\x00\x03\x00\x00" and decode_vector(wire) == floats
    with pytest.raises(ValueError):
        converter_for("vector")(b"\x00\x00\x80")


def test_arrays_enums_and_unknown_types():
    assert converter_for("_int4")("[1, 2, null]") == [1, 2, None]
    assert converter_for("stepstatus", is_enum=True)("success") == "success"
    with pytest.raises(UnknownColumnType):
        converter_for("tsvector")


def test_parents_come_first_and_cycles_are_deferred():
    keys = [
        ForeignKey("m_agent", "messages", "agents"),
        ForeignKey("a_org", "agents", "organizations"),
        ForeignKey("b_hist", "block", "block_history"),
        ForeignKey("h_block", "block_history", "block"),
        ForeignKey("b_org", "block", "organizations"),
        ForeignKey("m_parent", "messages", "messages"),
        ForeignKey("x_outside", "messages", "not_copied"),
    ]
    order = copy_order(["messages", "block_history", "agents", "block", "organizations"], keys)
    pos = {t: i for i, t in enumerate(order.tables)}
    assert pos["organizations"] < pos["agents"] < pos["messages"]
    assert pos["organizations"] < pos["block"]
    assert {k.name for k in order.deferred} == {"b_hist", "h_block", "m_parent"}
    assert sorted(order.tables) == ["agents", "block", "block_history", "messages", "organizations"]


def _plan(columns: list[str]):
    from letta_ops.tasks.move.move_plan import MovePlan, TablePlan

    return MovePlan([TablePlan("agents", 1, 10, "copy", columns=columns)])


def test_a_column_the_target_lacks_is_refused_by_name():
    from letta_ops.tasks.move.move_plan import UnmappedSchema, column_converters
    from letta_ops.tasks.move.postgres_target import TargetColumn

    target = {"agents": [TargetColumn("id", "varchar", False), TargetColumn("ok", "bool", False)]}
    assert len(column_converters(_plan(["id", "ok"]), target)["agents"]) == 2
    with pytest.raises(UnmappedSchema, match=r"agents\.operator_flag"):
        column_converters(_plan(["id", "operator_flag"]), target)
    with pytest.raises(UnmappedSchema, match="SQLite table 'agents'"):
        column_converters(_plan(["id"]), {})
    odd = {"agents": [TargetColumn("id", "tsvector", False)]}
    with pytest.raises(UnmappedSchema, match="'tsvector'"):
        column_converters(_plan(["id"]), odd)
