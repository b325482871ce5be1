"""pg_dump's ``--compress`` for a backup: which spellings are accepted and where the choice
comes from.

Why a module of its own: the Letta Database block validates the value when it is saved, and
a block must not import pg_dump's machinery (SQL drivers, subprocesses) to do so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import Refused

#: gzip at level 1, not pg_dump's own 6: measured (``bench/compression_choice.py``, the
#: long-history shape) it dumps about 3x faster for about 1.2x the bytes, within the issue's
#: rule (the fastest choice at no more than 1.8x gzip:6's bytes); ``none`` was 4.6x. A set
#: records its compression and pg_restore reads any of them, so older gzip:6 sets restore as
#: before.
DEFAULT_COMPRESSION = "gzip:1"

#: Each method's levels (``None``: takes no level).
_LEVELS: dict[str, tuple[int, int] | None] = {
    "none": None,
    "gzip": (0, 9),
    "zstd": (1, 22),
    "lz4": (1, 12),
}


def parse_compression(spec: str | None) -> str:
    """A pg_dump ``--compress`` value: ``none``, a gzip level ``0``-``9`` (``6`` means
    ``gzip:6``), ``gzip[:N]``, ``zstd[:N]`` (1-22) or ``lz4[:N]`` (1-12). Refused otherwise."""
    text = (spec or DEFAULT_COMPRESSION).strip().lower()
    if text.isdigit():
        text = f"gzip:{text}"
    method, _, level = text.partition(":")
    if method not in _LEVELS or (method == "none" and level):
        raise Refused(
            f"Compression {spec!r} is not one pg_dump knows; use none, a gzip level 0-9, "
            "gzip:N, zstd[:N] or lz4[:N]."
        )
    if level:
        low, high = _LEVELS[method] or (0, 0)
        if not level.isdigit() or not low <= int(level) <= high:
            raise Refused(f"Compression level {level!r} for {method} must be {low}-{high}.")
    return text


def chosen_compression(
    requested: str | None, saved: str | None, environ: Mapping[str, str] | None = None
) -> str:
    """The compression of one backup: ``requested`` (``--compress``, the run's parameter),
    else ``LETTA_OPS_COMPRESS``, else the database block's ``saved`` choice, else gzip:1 —
    the same order as the Object Lock settings (run, environment, block)."""
    env = os.environ if environ is None else environ
    return parse_compression(requested or env.get("LETTA_OPS_COMPRESS") or saved)
