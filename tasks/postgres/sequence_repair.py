"""Find and repair the PostgreSQL sequences behind Letta's columns.

Why this module: a restored, hand-built or partially migrated Letta database can carry
sequences that lag behind their column (rows inserted with explicit ids, ``pg_restore --data-only``,
copies between servers) or lose ``messages.sequence_id``'s default altogether. Letta's default is
``nextval('message_seq_id')`` on a *free-standing* sequence that is not OWNED BY the column, so
``pg_get_serial_sequence`` and ``pg_dump -t messages`` do not see it. Without that default every
message insert fails (the column is NOT NULL); with a sequence behind ``max(sequence_id)`` inserts
fail on the unique constraint. Sequences are therefore found through column defaults
(``pg_attrdef`` expressions calling ``nextval``), as well as through ownership and identity.

Only Letta's tables' sequences are repaired (``letta_ops.tasks.postgres.letta_objects``): a database
Letta shares keeps the operator's sequences as they are.

Everything is plain synchronous sqlalchemy (pg8000 through
:func:`letta_ops.tasks.postgres.letta_schema.connect`); a thin Prefect task sits at the bottom.

Note: ``setval`` is not transactional in PostgreSQL (a rollback does not undo it), so a dry run
never calls it; it plans from the catalog and the sequences' current state instead, through the
same code path as a real run, so both report the same changes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Connection

from .database import PostgresDatabase
from .letta_objects import LETTA_TABLES
from .letta_schema import connect, quote_ident

MESSAGES_TABLE = "messages"
MESSAGES_COLUMN = "sequence_id"
MESSAGES_SEQUENCE = "message_seq_id"

#: How long a real repair waits for the table locks before giving up (a busy server).
LOCK_TIMEOUT = "30s"

SequenceSource = Literal["default", "owned", "identity"]

#: ``nextval('name'::regclass)`` as pg_get_expr prints it; also the pre-8.1 form
#: ``nextval(('name'::text)::regclass)`` found in very old dumps.
_NEXTVAL_RE = re.compile(r"nextval\(\(?'((?:[^']|'')+)'::(?:regclass|text)")

#: When one column is reached several ways, report the most specific source.
_SOURCE_RANK = {"identity": 0, "owned": 1, "default": 2}


@dataclass(frozen=True)
class SequenceColumn:
    """A column whose values come from a sequence.

    ``sequence`` is the schema-qualified name, quoted where needed (``public.message_seq_id``),
    usable as SQL text and as a ``regclass`` literal.
    """

    schema: str
    table: str
    column: str
    sequence: str
    source: SequenceSource

    @property
    def qualified_table(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"


@dataclass
class SequenceRepairReport:
    """What a repair changed (or, in a dry run, would change) and every column it checked."""

    schema: str
    dry_run: bool
    changes: list[dict] = field(default_factory=list)
    checked: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def qualified_name(conn: Connection, schema: str, name: str) -> str:
    """``schema.name`` quoted the way PostgreSQL quotes identifiers (only where needed)."""
    return str(
        conn.execute(
            sa.text("SELECT format('%I.%I', CAST(:s AS text), CAST(:n AS text))"),
            {"s": schema, "n": name},
        ).scalar()
    )


def _regclass_literal(name: str) -> str:
    """A SQL string literal holding ``name`` (for ``'...'::regclass``)."""
    return "'" + name.replace("'", "''") + "'"


def find_sequence_columns(conn: Connection, schema: str) -> list[SequenceColumn]:
    """Every column of ``schema``'s tables whose values come from a sequence.

    Three ways in, de-duplicated by column (identity > owned > default for ``source``):

    - column defaults calling ``nextval(...)`` (``pg_attrdef``): the only way to see Letta's
      free-standing ``message_seq_id`` behind ``messages.sequence_id``;
    - sequences OWNED BY a column (``pg_depend`` deptype ``a``: ``serial`` columns);
    - identity columns (``attidentity``; their sequence through ``pg_get_serial_sequence``).
    """
    found: dict[tuple[str, str, str], SequenceColumn] = {}

    def add(col: SequenceColumn) -> None:
        key = (col.table, col.column, col.sequence)
        old = found.get(key)
        if old is None or _SOURCE_RANK[col.source] < _SOURCE_RANK[old.source]:
            found[key] = col

    defaults = conn.execute(
        sa.text(
            """
            SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) AS expr
            FROM pg_attrdef d
            JOIN pg_class c ON c.oid = d.adrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
            WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')
              AND NOT a.attisdropped
              AND pg_get_expr(d.adbin, d.adrelid) LIKE '%nextval(%'
            ORDER BY c.relname, a.attnum
            """
        ),
        {"schema": schema},
    ).all()
    for table, column, expr in defaults:
        match = _NEXTVAL_RE.search(expr)
        if not match:
            continue
        raw = match.group(1).replace("''", "'")
        # pg_get_expr printed the name relative to this session's search_path: resolve it here.
        seq = conn.execute(
            sa.text(
                """
                SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = to_regclass(:name) AND c.relkind = 'S'
                """
            ),
            {"name": raw},
        ).scalar()
        if seq:
            add(SequenceColumn(schema, table, column, seq, "default"))

    owned = conn.execute(
        sa.text(
            """
            SELECT t.relname, a.attname, format('%I.%I', sn.nspname, s.relname) AS seq,
                   d.deptype, a.attidentity
            FROM pg_depend d
            JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
            JOIN pg_namespace sn ON sn.oid = s.relnamespace
            JOIN pg_class t ON t.oid = d.refobjid
            JOIN pg_namespace tn ON tn.oid = t.relnamespace
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.deptype IN ('a', 'i') AND tn.nspname = :schema
              AND t.relkind IN ('r', 'p') AND NOT a.attisdropped
            ORDER BY t.relname, a.attnum
            """
        ),
        {"schema": schema},
    ).all()
    for table, column, seq, deptype, identity in owned:
        source: SequenceSource = "identity" if (deptype == "i" or identity) else "owned"
        add(SequenceColumn(schema, table, column, seq, source))

    identities = conn.execute(
        sa.text(
            """
            SELECT c.relname, a.attname,
                   pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname)
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')
              AND a.attidentity <> '' AND NOT a.attisdropped
            ORDER BY c.relname, a.attnum
            """
        ),
        {"schema": schema},
    ).all()
    for table, column, serial in identities:
        if not serial:
            continue
        seq = conn.execute(
            sa.text(
                """
                SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = to_regclass(:name)
                """
            ),
            {"name": serial},
        ).scalar()
        if seq:
            add(SequenceColumn(schema, table, column, seq, "identity"))

    return sorted(found.values(), key=lambda c: (c.table, c.column, c.sequence))


# --------------------------------------------------------------------------------------------
# Planning (shared by repair, dry run and health)
# --------------------------------------------------------------------------------------------


@dataclass
class _SequenceState:
    last_value: int
    is_called: bool
    increment: int

    @property
    def next_value(self) -> int:
        """The value the next ``nextval`` would hand out."""
        return self.last_value + self.increment if self.is_called else self.last_value


@dataclass
class _MessagesDefault:
    """messages.sequence_id exists with neither a default nor identity."""

    sequence: str
    sequence_exists: bool


@dataclass
class _Plan:
    schema: str
    messages_default: _MessagesDefault | None
    columns: list[SequenceColumn]
    maxima: dict[tuple[str, str], int | None]
    states: dict[str, _SequenceState]
    changes: list[dict]
    checked: list[dict]


def _messages_default_missing(conn: Connection, schema: str) -> _MessagesDefault | None:
    row = conn.execute(
        sa.text(
            """
            SELECT a.atthasdef, a.attidentity
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = :schema AND c.relname = :table AND a.attname = :column
              AND c.relkind IN ('r', 'p') AND NOT a.attisdropped
            """
        ),
        {"schema": schema, "table": MESSAGES_TABLE, "column": MESSAGES_COLUMN},
    ).first()
    if row is None or row[0] or row[1]:
        return None
    sequence = qualified_name(conn, schema, MESSAGES_SEQUENCE)
    kind = conn.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": sequence},
    ).scalar()
    if kind is not None and kind != "S":
        raise RuntimeError(
            f"{sequence} exists but is not a sequence (relkind {kind!r}); rename it before "
            "repairing messages.sequence_id."
        )
    return _MessagesDefault(sequence=sequence, sequence_exists=kind == "S")


def _read_state(conn: Connection, sequence: str) -> _SequenceState:
    last_value, is_called = conn.execute(
        sa.text(f"SELECT last_value, is_called FROM {sequence}")
    ).one()
    increment = conn.execute(
        sa.text("SELECT seqincrement FROM pg_sequence WHERE seqrelid = to_regclass(:name)"),
        {"name": sequence},
    ).scalar()
    return _SequenceState(int(last_value), bool(is_called), int(increment or 1))


def _plan(conn: Connection, schema: str, lock: bool, tables: frozenset[str]) -> _Plan:
    """Read the catalog and the data; decide every change without making any.

    Only the columns of ``tables`` (Letta's: ``letta_ops.tasks.postgres.letta_objects``) are
    considered: the sequences of the operator's own tables beside Letta's are not letta-ops' to
    move. With ``lock``, the tables are locked against writes (until the transaction ends) before
    their maximum is read, so no insert slips in between planning and ``setval``.
    """
    missing = _messages_default_missing(conn, schema)
    changes: list[dict] = []
    columns = [c for c in find_sequence_columns(conn, schema) if c.table in tables]
    states: dict[str, _SequenceState] = {}
    if missing is not None:
        if not missing.sequence_exists:
            changes.append({"action": "create-sequence", "sequence": missing.sequence})
            # What CREATE SEQUENCE ... START 1 will hold.
            states[missing.sequence] = _SequenceState(1, False, 1)
        changes.append(
            {
                "action": "set-default",
                "table": MESSAGES_TABLE,
                "column": MESSAGES_COLUMN,
                "sequence": missing.sequence,
            }
        )
        if not any(c.table == MESSAGES_TABLE and c.column == MESSAGES_COLUMN for c in columns):
            columns.append(
                SequenceColumn(schema, MESSAGES_TABLE, MESSAGES_COLUMN, missing.sequence, "default")
            )
            columns.sort(key=lambda c: (c.table, c.column, c.sequence))

    if lock:
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        for table in sorted({c.qualified_table for c in columns}):
            conn.execute(sa.text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))

    maxima: dict[tuple[str, str], int | None] = {}
    for col in columns:
        value = conn.execute(
            sa.text(f"SELECT max({quote_ident(col.column)}) FROM {col.qualified_table}")
        ).scalar()
        maxima[(col.table, col.column)] = None if value is None else int(value)
        if col.sequence not in states:
            states[col.sequence] = _read_state(conn, col.sequence)

    # One setval per sequence, to the highest value over every column it feeds.
    checked: list[dict] = []
    by_sequence: dict[str, list[SequenceColumn]] = {}
    for col in columns:
        by_sequence.setdefault(col.sequence, []).append(col)
    for sequence, cols in by_sequence.items():
        state = states[sequence]
        before = state.next_value
        with_rows = [c for c in cols if maxima[(c.table, c.column)] is not None]
        top = max(with_rows, key=lambda c: maxima[(c.table, c.column)]) if with_rows else None
        top_max = maxima[(top.table, top.column)] if top else None
        behind = top_max is not None and state.increment > 0 and before <= top_max
        if behind:
            changes.append(
                {
                    "action": "setval",
                    "sequence": sequence,
                    "table": top.table,
                    "column": top.column,
                    "from": before,
                    "to": top_max + state.increment,
                }
            )
        for col in cols:
            col_max = maxima[(col.table, col.column)]
            checked.append(
                {
                    "table": col.table,
                    "column": col.column,
                    "sequence": sequence,
                    "source": col.source,
                    "max": col_max,
                    "next_value": before,
                    "ok": not (col_max is not None and state.increment > 0 and before <= col_max),
                }
            )
    checked.sort(key=lambda c: (c["table"], c["column"]))
    return _Plan(schema, missing, columns, maxima, states, changes, checked)


def _apply(conn: Connection, plan: _Plan) -> None:
    for change in plan.changes:
        action = change["action"]
        if action == "create-sequence":
            conn.execute(sa.text(f"CREATE SEQUENCE {change['sequence']} START 1"))
        elif action == "set-default":
            table = f"{quote_ident(plan.schema)}.{quote_ident(change['table'])}"
            literal = _regclass_literal(change["sequence"])
            conn.execute(
                sa.text(
                    f"ALTER TABLE {table} ALTER COLUMN {quote_ident(change['column'])} "
                    f"SET DEFAULT nextval({literal}::regclass)"
                )
            )
        elif action == "setval":
            increment = plan.states[change["sequence"]].increment
            conn.execute(
                sa.text("SELECT setval(CAST(CAST(:seq AS text) AS regclass), :value, true)"),
                {"seq": change["sequence"], "value": change["to"] - increment},
            )
        else:  # pragma: no cover - the planner makes only the actions above
            raise ValueError(f"unknown action {action!r}")


# --------------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------------


def letta_tables_of(db: PostgresDatabase) -> frozenset[str]:
    """The table names whose sequences are Letta's: Letta's own and the block's extras."""
    return LETTA_TABLES | frozenset(db.extra_tables)


def repair_sequences(db: PostgresDatabase, dry_run: bool = False) -> SequenceRepairReport:
    """Give messages.sequence_id its default back and move every lagging sequence past its max.

    One transaction. With ``dry_run`` nothing is changed (no locks, no DDL, no ``setval``)
    and the report lists exactly what a real run would do. A second real run changes nothing.
    """
    schema = db.db_schema or "public"
    with connect(db) as conn:
        try:
            plan = _plan(conn, schema, lock=not dry_run, tables=letta_tables_of(db))
            if not dry_run:
                _apply(conn, plan)
        except BaseException:
            conn.rollback()
            raise
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    return SequenceRepairReport(
        schema=schema, dry_run=dry_run, changes=plan.changes, checked=plan.checked
    )


def sequence_health(db: PostgresDatabase) -> list[dict]:
    """Read-only check for ``doctor``: one entry per sequence column, ``ok`` and ``problem``."""
    schema = db.db_schema or "public"
    with connect(db) as conn:
        try:
            plan = _plan(conn, schema, lock=False, tables=letta_tables_of(db))
        finally:
            conn.rollback()
    results = []
    for entry in plan.checked:
        problems = []
        is_messages = (entry["table"], entry["column"]) == (MESSAGES_TABLE, MESSAGES_COLUMN)
        if is_messages and plan.messages_default is not None:
            missing = plan.messages_default
            problems.append(
                f"{MESSAGES_TABLE}.{MESSAGES_COLUMN} has no default, so every message insert "
                f"fails; it should be nextval('{missing.sequence}')"
                + (
                    ""
                    if missing.sequence_exists
                    else f" and sequence {missing.sequence} is missing"
                )
                + "."
            )
        elif not entry["ok"]:
            problems.append(
                f"Sequence {entry['sequence']} would hand out {entry['next_value']} but "
                f"{entry['table']}.{entry['column']} already holds up to {entry['max']}: "
                "inserts will collide until it is set past the maximum."
            )
        if is_messages and plan.messages_default is not None and not entry["ok"]:
            if plan.messages_default.sequence_exists:
                problems.append(
                    f"Sequence {entry['sequence']} is also behind the column's maximum "
                    f"({entry['next_value']} <= {entry['max']})."
                )
        results.append({**entry, "ok": not problems, "problem": " ".join(problems) or None})
    return results


# --------------------------------------------------------------------------------------------
# Prefect task (thin wrapper)
# --------------------------------------------------------------------------------------------


@task(name="repair-sequences", cache_policy=NO_CACHE)
def repair_sequences_task(db: PostgresDatabase, dry_run: bool = False) -> dict:
    """Repair Letta's sequences; never cached, since the database changes under it."""
    from prefect import get_run_logger

    logger = get_run_logger()
    report = repair_sequences(db, dry_run=dry_run)
    verb = "Would apply" if dry_run else "Applied"
    for change in report.changes:
        logger.info(f"{verb} {change['action']}: {change}")
    if not report.changes:
        logger.info(f"All {len(report.checked)} sequence columns are healthy.")
    return report.to_dict()
