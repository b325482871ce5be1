"""Lanes of a streamed restore: which tables load where, and the spool they all follow."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from letta_ops.tasks.postgres.dump_lanes import (
    StreamSpool,
    assign_lanes,
    room_for_spool,
    table_data_name,
)
from letta_ops.tasks.postgres.restore import CheckedStream, DataLane, EarlyIndexBuilds, _feed_lanes

TOC = [
    "215; 1259 16390 TABLE public agents letta",
    "3601; 0 16390 TABLE DATA public agents letta",
    "3602; 0 16400 TABLE DATA public messages letta",
    "3603; 0 16410 TABLE DATA public passages letta",
    "3604; 0 16420 TABLE DATA public tools letta",
    "3700; 0 0 SEQUENCE SET public message_seq letta",
    "3390; 2606 16500 CONSTRAINT public messages messages_pkey letta",
]


def test_table_data_name_reads_only_table_data_lines():
    assert table_data_name(TOC[2]) == "messages"
    assert table_data_name(TOC[0]) is None and table_data_name(TOC[5]) is None


def test_the_biggest_tables_go_to_different_lanes_and_lane_zero_keeps_the_rest():
    weights = {"messages": 800_000, "passages": 500_000, "agents": 26, "tools": 40}
    first, second = assign_lanes(TOC, 2, weights)
    assert TOC[2] in first and TOC[3] in second  # messages and passages load side by side
    assert set(first) | set(second) == set(TOC) and not set(first) & set(second)
    assert TOC[5] in first and TOC[0] in first  # sequence values and other entries: lane 0
    assert [line for line in TOC if line in first] == first  # TOC order kept in each lane


def test_one_lane_when_one_table_is_nearly_all_of_the_dump():
    assert assign_lanes(TOC, 2, {"messages": 95, "passages": 5}) == [TOC]
    assert len(assign_lanes(TOC, 2, {"messages": 85, "passages": 15})) == 2


def test_one_lane_when_only_one_table_has_rows_or_one_job():
    assert assign_lanes(TOC, 2, {"messages": 10}) == [TOC]
    assert assign_lanes(TOC, 1, {"messages": 10, "passages": 10}) == [TOC]
    assert assign_lanes(TOC, 2, {}) == [TOC]
    assert len(assign_lanes(TOC, 4, {"messages": 9, "passages": 5, "tools": 3})) == 3


def test_every_reader_gets_every_byte_in_order_while_the_spool_grows(tmp_path: Path):
    spool = StreamSpool(tmp_path / "spool")
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    received: list[bytes] = [b"", b""]

    def read(slot: int) -> None:
        received[slot] = b"".join(spool.chunks(chunk_size=777))

    readers = [threading.Thread(target=read, args=(slot,)) for slot in (0, 1)]
    for reader in readers:
        reader.start()
    for chunk in chunks:
        spool.append(chunk)
    spool.close()
    for reader in readers:
        reader.join(timeout=10)
    assert received == [b"".join(chunks)] * 2


def test_a_reader_started_after_the_close_reads_everything(tmp_path: Path):
    spool = StreamSpool(tmp_path / "spool")
    spool.append(b"abc")
    spool.close()
    assert b"".join(spool.chunks()) == b"abc"


def test_a_spool_needs_the_dumps_size_and_headroom_free_on_its_disk(tmp_path: Path):
    total = shutil.disk_usage(tmp_path).total
    assert room_for_spool(tmp_path, None)  # size unknown (an older set): assumed to fit
    assert room_for_spool(tmp_path, 0)
    assert not room_for_spool(tmp_path, total)  # the whole disk: never free with headroom
    assert not room_for_spool(tmp_path, 10 * total)


class _StreamHeldUntil:
    """A dump stream: one chunk, then more only once ``ready()`` (a lane has died), then
    its end; ``chunks_read`` says how far the restore read it."""

    def __init__(self, ready, chunks: int = 8, size: int = 1 << 16) -> None:
        self.ready, self.left, self.size, self.chunks_read = ready, chunks, size, 0

    def read(self, n: int = -1) -> bytes:
        if self.chunks_read:
            deadline = time.monotonic() + 10
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.chunks_read == self.left:
            return b""
        self.chunks_read += 1
        return b"x" * self.size


def test_the_lane_that_failed_first_is_named_and_the_stream_stops_there(tmp_path: Path):
    """Two lanes; one fails after its first bytes, the other fails only when its input is cut
    (as pg_restore does). The restore must report the first, not the cut one: the lanes here
    are shell stand-ins for pg_restore, since what is tested is the feeding, not pg_restore."""
    env = dict(os.environ)
    with ThreadPoolExecutor(1) as pool:
        early = [EarlyIndexBuilds({}, lambda lines: [], pool) for _ in range(2)]
        cut_off = DataLane(["sh", "-c", "cat > /dev/null; exit 3"], env, early[0])
        failing = DataLane(
            ["sh", "-c", "head -c 1 > /dev/null; echo 'error: disk full' >&2; exit 1"],
            env,
            early[1],
        )
        stream = _StreamHeldUntil(lambda: failing.proc.poll() is not None)
        source = CheckedStream(stream, 1 << 16, b"x")
        first = _feed_lanes([cut_off, failing], source, tmp_path / "stream.spool")
    assert first is failing and "disk full" in failing.stderr.text()
    assert cut_off.proc.returncode == 3  # it was cut off, and ended as pg_restore would
    assert stream.chunks_read < stream.left  # the rest of the dump was never downloaded


def test_builds_still_queued_when_the_rows_are_in_go_back_to_the_final_step():
    """One worker, held by the first table's build: the second table's build is still queued
    when the data run ends. It is cancelled and leaves ``built`` (the final step builds it with
    every worker, beside the last table's, which is never queued); the running one finishes
    and its warnings are kept."""
    release = threading.Event()
    ran: list[list[str]] = []

    def build(lines: list[str]) -> list[str]:
        ran.append(lines)
        release.wait(10)
        return [f"warning from {lines[0]}"]

    schedule = {"public.a": ["a_pkey"], "public.b": ["b_pkey"], "public.c": ["c_pkey"]}
    with ThreadPoolExecutor(1) as pool:
        early = EarlyIndexBuilds(schedule, build, pool)
        for table in ("a", "b", "c"):
            early.progress(f'pg_restore: processing data for table "public.{table}"')
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Timer(0.2, release.set).start()
        warnings = early.finish()
    assert ran == [["a_pkey"]]  # b's build never ran
    assert warnings == ["warning from a_pkey"]
    assert early.built == {"a_pkey"}  # b and c are left to the final step
    assert schedule == {"public.c": ["c_pkey"]}
