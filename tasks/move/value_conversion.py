"""SQLite values as PostgreSQL's binary COPY takes them, by the target column's type.

Why a module of its own: SQLite keeps what SQLAlchemy wrote for Letta as text, integers and
blobs (JSON as text, booleans as 0/1, timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` text,
embeddings as sqlite-vec float32 blobs); asyncpg's binary COPY wants Python values of the
column's real type. The conversion is keyed by the PostgreSQL type that the same Letta
version's alembic created, so a type this module does not know is refused (by name) before
anything is written, never guessed.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

Converter = Callable[[Any], Any]


class UnknownColumnType(ValueError):
    """A target column's PostgreSQL type has no conversion here."""


def to_bool(value: Any) -> bool:
    """SQLite's 0/1 (SQLAlchemy's Boolean), also 'true'/'false' text written by hand."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a boolean (0 or 1)")
    text = str(value).strip().lower()
    if text in ("1", "t", "true", "yes", "on"):
        return True
    if text in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def to_json_text(value: Any) -> str:
    """JSON as text (asyncpg's json and jsonb codecs take a str). Text is checked to be JSON
    and kept byte for byte; a number SQLite stored bare becomes its JSON text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        json.loads(value)
        return value
    return json.dumps(value)


def to_datetime(value: Any) -> datetime:
    """SQLAlchemy's SQLite DateTime text (naive, UTC), ISO 8601 with an offset, or a Unix
    time; always aware, in UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    else:
        text = value.decode() if isinstance(value, bytes) else str(value)
        parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_naive_datetime(value: Any) -> datetime:
    """``timestamp without time zone``: the same instant, in UTC, without an offset."""
    return to_datetime(value).replace(tzinfo=None)


def to_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value).strip()[:10])


def to_time(value: Any) -> time:
    return value if isinstance(value, time) else time.fromisoformat(str(value).strip())


def to_int(value: Any) -> int:
    """An integer column; a float SQLite holds must be integral (nothing is rounded)."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    return int(str(value).strip())


def to_float(value: Any) -> float:
    return float(value)


def to_decimal(value: Any) -> Decimal:
    return Decimal(str(value))


def to_text(value: Any) -> str:
    """Text columns: bytes are decoded as UTF-8; numbers keep the text SQLite prints."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value if isinstance(value, str) else str(value)


def to_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def to_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(to_text(value))


def to_vector(value: Any) -> list[float]:
    """An embedding: sqlite-vec's blob (float32, little-endian: what Letta 0.11 writes on
    SQLite) or JSON text ``[0.1, ...]``."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) % 4:
            raise ValueError(f"an embedding blob of {len(data)} bytes is not float32s")
        floats = list(struct.unpack(f"<{len(data) // 4}f", data))
    else:
        floats = [float(x) for x in json.loads(to_text(value))]
    if not all(math.isfinite(x) for x in floats):
        raise ValueError("an embedding holds NaN or infinity, which pgvector refuses")
    return floats


def encode_vector(values: list[float]) -> bytes:
    """pgvector's binary form (``vector_send``): int16 dimensions, int16 unused, float4s,
    network byte order. asyncpg has no codec for the extension's type: this is its encoder."""
    return struct.pack(f"!hh{len(values)}f", len(values), 0, *values)


def decode_vector(data: bytes) -> list[float]:
    dims, _unused = struct.unpack_from("!hh", data)
    return list(struct.unpack_from(f"!{dims}f", data, 4))


#: PostgreSQL type name (pg_type.typname) -> conversion.
SCALAR_CONVERTERS: dict[str, Converter] = {
    "bool": to_bool,
    "json": to_json_text,
    "jsonb": to_json_text,
    "timestamptz": to_datetime,
    "timestamp": to_naive_datetime,
    "date": to_date,
    "time": to_time,
    "int2": to_int,
    "int4": to_int,
    "int8": to_int,
    "float4": to_float,
    "float8": to_float,
    "numeric": to_decimal,
    "text": to_text,
    "varchar": to_text,
    "bpchar": to_text,
    "citext": to_text,
    "bytea": to_bytes,
    "uuid": to_uuid,
    "vector": to_vector,
}


def _array_of(element: Converter) -> Converter:
    """A PostgreSQL array column: SQLite holds the list as JSON text."""

    def convert(value: Any) -> list:
        items = json.loads(to_text(value)) if not isinstance(value, list) else value
        if not isinstance(items, list):
            raise ValueError(f"{value!r} is not a JSON list")
        return [None if item is None else element(item) for item in items]

    return convert


def converter_for(type_name: str, is_enum: bool = False) -> Converter:
    """The conversion into a column of PostgreSQL type ``type_name`` (``_x`` is an array of
    ``x``; an enum takes its label as text). Raises :class:`UnknownColumnType`."""
    if is_enum:
        return to_text
    if type_name in SCALAR_CONVERTERS:
        return SCALAR_CONVERTERS[type_name]
    if type_name.startswith("_") and type_name[1:] in SCALAR_CONVERTERS:
        return _array_of(SCALAR_CONVERTERS[type_name[1:]])
    raise UnknownColumnType(type_name)
