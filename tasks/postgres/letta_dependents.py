"""What is not Letta's but depends on Letta's tables: what a reset in place cannot drop.

Why before the stop: emptying Letta's tables in place (``DROP TABLE ... CASCADE``) would take
an operator's view over them, or a foreign key from an operator's table, with them; the reset
therefore refuses and drops nothing
(:func:`letta_ops.tasks.postgres.letta_schema.reset_schema_in_place`). But it ran after the server
had stopped, and a rollback's undo (or an upgrade's automatic rollback) resets the same way and was
refused the same way: the server stayed down with its data intact (found by
``tests/test_injected_faults_e2e.py``: a view ``agent_names`` over ``agents``). Read from the
catalog while the server still runs, the same objects refuse the run before it stops anything.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import Refused

#: Views (and materialized views) whose rules read one of the tables, and foreign keys of
#: other tables that reference one of them: what ``DROP TABLE ... CASCADE`` would take.
_DEPENDENTS_SQL = """
WITH letta AS (SELECT CAST(CAST(t AS regclass) AS oid) AS oid
               FROM unnest(CAST(:tables AS text[])) AS t)
SELECT DISTINCT format('%s %I.%I', CASE v.relkind WHEN 'm' THEN 'materialized view'
                                              ELSE 'view' END, n.nspname, v.relname)
FROM pg_depend d
JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
JOIN pg_class v ON v.oid = r.ev_class
JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM letta)
  AND r.ev_class NOT IN (SELECT oid FROM letta)
UNION
SELECT format('%I.%I constraint %I', n.nspname, c.relname, k.conname)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f' AND k.confrelid IN (SELECT oid FROM letta)
  AND k.conrelid NOT IN (SELECT oid FROM letta)
ORDER BY 1
"""


class DependentObjectsRefused(Refused):
    """Something that is not Letta's depends on Letta's tables; nothing was stopped."""


def objects_depending_on(conn: Connection, tables: Iterable[str]) -> list[str]:
    """``view public.agent_names``, ``public.app_notes constraint app_notes_agent_id_fkey``:
    the objects outside ``tables`` (qualified names) that a cascade drop of them would take."""
    names = sorted(tables)
    if not names:
        return []
    return [row[0] for row in conn.execute(sa.text(_DEPENDENTS_SQL), {"tables": names})]


def refuse_dependents(schema: str, dependents: Iterable[str]) -> None:
    """The pre-flight's sentence: raises :class:`DependentObjectsRefused` naming the first."""
    found = list(dependents)
    if not found:
        return
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise DependentObjectsRefused(
        f"Emptying Letta's tables in schema {schema} for a restore would also drop "
        f"{found[0]}{more}, which is not Letta's but depends on Letta's tables; nothing was "
        "stopped or dropped; drop or detach it first (and create it again after the run)."
    )
