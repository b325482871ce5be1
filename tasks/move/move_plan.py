"""What a move will copy: the SQLite side's tables, rows and bytes, the expected time, and
the mapping of every SQLite column onto the schema the same Letta version built in PostgreSQL.

Why before any row: a table or column the mapping does not know (a newer Letta's, a hand-added
one) would otherwise be dropped silently or fail halfway through; it is refused, by name,
before the first row is written.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field

from ..errors import Refused
from .postgres_target import TargetColumn
from .sqlite_source import (
    NOT_COPIED,
    SQLITE_ONLY_TABLES,
    row_count,
    sqlite_columns,
    sqlite_tables,
    table_bytes,
)
from .value_conversion import Converter, UnknownColumnType, converter_for

#: The copy's rate measured by bench/move_ratio.py (a 1 GiB file in 98.6 s on 2 busy cores:
#: about 10.8 MB of SQLite per second), used only for the plan's expected time.
MEASURED_BYTES_PER_SECOND = 10_000_000
#: Fixed costs beside the rows: alembic on the target (~15 s), counts, restart (~40 s).
FIXED_SECONDS = 60.0


class UnmappedSchema(Refused):
    """A SQLite table or column has no place in the target schema."""


@dataclass
class TablePlan:
    """One SQLite table: what the move does with it."""

    name: str
    rows: int
    bytes: int
    action: str  # "copy" or "skip"
    reason: str = ""
    columns: list[str] = field(default_factory=list)


@dataclass
class MovePlan:
    tables: list[TablePlan]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables if t.action == "copy")

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables if t.action == "copy")

    @property
    def expected_seconds(self) -> float:
        return round(FIXED_SECONDS + self.bytes / MEASURED_BYTES_PER_SECOND, 1)

    def copied(self) -> list[TablePlan]:
        return [t for t in self.tables if t.action == "copy"]

    def as_dict(self) -> dict:
        return {
            "tables": [asdict(t) for t in self.tables],
            "rows": self.rows,
            "bytes": self.bytes,
            "expected_seconds": self.expected_seconds,
        }


def source_plan(conn: sqlite3.Connection) -> MovePlan:
    """The plan from the SQLite side alone (what ``--dry-run`` shows)."""
    tables = []
    for name in sqlite_tables(conn):
        rows, size = row_count(conn, name), table_bytes(conn, name)
        if name in SQLITE_ONLY_TABLES:
            tables.append(TablePlan(name, rows, size, "skip", SQLITE_ONLY_TABLES[name]))
        elif name in NOT_COPIED:
            tables.append(TablePlan(name, rows, size, "skip", "written by the target's alembic"))
        else:
            tables.append(TablePlan(name, rows, size, "copy", columns=sqlite_columns(conn, name)))
    return MovePlan(tables)


def column_converters(
    plan: MovePlan, target: dict[str, list[TargetColumn]]
) -> dict[str, list[Converter]]:
    """Each copied table's conversions, column by column; refuses the first table, column or
    type the target does not know."""
    converters: dict[str, list[Converter]] = {}
    for table in plan.copied():
        if table.name not in target:
            raise UnmappedSchema(
                f"SQLite table {table.name!r} has no table in the PostgreSQL schema this Letta "
                "version builds; nothing was copied (drop or rename it in a copy of the file "
                "if it is not Letta's)."
            )
        by_name = {c.name: c for c in target[table.name]}
        converters[table.name] = []
        for column in table.columns:
            if column not in by_name:
                raise UnmappedSchema(
                    f"SQLite column {table.name}.{column} has no column in the PostgreSQL "
                    "schema this Letta version builds; nothing was copied."
                )
            spec = by_name[column]
            try:
                converters[table.name].append(converter_for(spec.type_name, spec.is_enum))
            except UnknownColumnType:
                raise UnmappedSchema(
                    f"Column {table.name}.{column} has PostgreSQL type {spec.type_name!r}, "
                    "which the move does not know how to convert; nothing was copied."
                ) from None
    return converters
