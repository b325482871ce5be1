"""Load a streamed dump's tables in parallel lanes, as ``pg_restore -j N`` does from a file.

Why: one stream into one ``pg_restore --section=data`` loads the tables one after another;
on a database whose rows sit in two big tables (Letta's messages and passages) that is about
twice the time ``pg_restore -j 2`` takes from a file. pg_restore can read only from the start
of a stream, and skips the blocks of tables it was not asked for. So each lane is a
``pg_restore --section=data --use-list=<its tables>`` that reads the whole stream, loads its
own tables and skips the rest. The stream is read once, from the store, into a local spool
file that every lane follows as it grows: a lane busy loading a big table does not hold the
download or the other lanes back. The spool costs the dump's size on local disk while the
restore runs, which the download-first (in-place) restore costs as well.

Which tables go in which lane is decided before the first byte arrives (pg_restore takes its
list when it starts), by each table's size on disk the manifest recorded (its row counts in
older sets): the biggest tables go to different lanes (largest first, each to the lightest
lane), and a dump that is nearly all one table keeps one lane and no spool.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

#: A data entry of ``pg_restore --list``: ``3456; 0 16789 TABLE DATA public messages owner``.
_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA (?P<schema>\S+) (?P<table>\S+) ")


#: Lanes only when the busiest would do less than this share of the rows (by weight): with
#: one table nearly all of the dump, lanes cannot shorten the load, and their spool and the
#: extra readers of the stream cost CPU on the way.
ONE_LANE_SHARE = 0.9


#: Room left free beside a spool: a restore must not fill the disk it shares with others.
SPOOL_HEADROOM = 256 << 20


def room_for_spool(directory: Path, size: int | None) -> bool:
    """Whether ``directory``'s file system holds a spool of ``size`` bytes (the dump's size;
    ``None``: unknown, assumed to fit) with :data:`SPOOL_HEADROOM` to spare.

    Why: lanes are only faster; a spool that fills the disk halfway fails the whole restore.
    Without the room, one lane reads the stream directly and nothing touches the disk.
    """
    return size is None or shutil.disk_usage(directory).free >= size + SPOOL_HEADROOM


def table_data_name(toc_line: str) -> str | None:
    """The table a ``TABLE DATA`` line of a TOC loads (``None`` for any other entry)."""
    found = _TABLE_DATA.match(toc_line)
    return found["table"] if found else None


def assign_lanes(listing: list[str], lanes: int, weights: Mapping[str, int]) -> list[list[str]]:
    """The ``--use-list`` lines of each data lane: lane 0 keeps every line but the table data
    handed to the others (sequence values and anything unnamed stay there); each table's
    data goes to the lane with the least weight so far, heaviest table first. Lanes that
    would get nothing are dropped, and one lane is kept when the busiest would carry at least
    :data:`ONE_LANE_SHARE` of the weight."""
    data = [(line, weights.get(table_data_name(line) or "", 0)) for line in listing]
    data = [(line, rows) for line, rows in data if rows > 0 and table_data_name(line)]
    loads = [0] * max(1, lanes)
    chosen: dict[str, int] = {}
    for line, rows in sorted(data, key=lambda item: -item[1]):
        lane = loads.index(min(loads))
        chosen[line] = lane
        loads[lane] += rows
    if max(loads) >= ONE_LANE_SHARE * sum(loads):
        return [listing]  # one table is nearly all of it: a spool would buy nothing
    used = sorted({0, *chosen.values()})
    lists: list[list[str]] = [[] for _ in used]
    for line in listing:
        lists[used.index(chosen.get(line, 0))].append(line)
    return lists


class StreamSpool:
    """A stream written once to ``path`` and read by several readers as it grows.

    ``append`` is called by the one writer; each :meth:`chunks` iterator reads from the start
    and waits for more until :meth:`close`. A reader never waits for another reader, and
    the writer never waits for a reader.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("wb")
        self._size = 0
        self._closed = False
        self._grown = threading.Condition()

    def append(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._file.flush()  # to the kernel: the readers read the same file
        with self._grown:
            self._size += len(chunk)
            self._grown.notify_all()

    def close(self) -> None:
        """No more bytes (the stream ended, or failed): readers finish what is there."""
        if not self._file.closed:
            self._file.close()
        with self._grown:
            self._closed = True
            self._grown.notify_all()

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The spool's bytes from the start, as they arrive, until it is closed."""
        with self.path.open("rb") as reader:
            position = 0
            while True:
                with self._grown:
                    while self._size == position and not self._closed:
                        self._grown.wait()
                    available = self._size - position
                if available == 0:
                    return
                chunk = reader.read(min(available, chunk_size))
                position += len(chunk)
                yield chunk
