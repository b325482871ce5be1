"""Remove phantom folder (source) rows in SQL, the one way they can go.

Why SQL: a phantom is a ``sources`` row the folder list shows but no call by id can act on,
either because it is soft-deleted (``is_deleted``: delete answers 404) or because its id is not
``source-<uuid4>`` (every call by id answers 422). Operators had 41 of them that no API call
could remove.

Safety: only rows that *are* phantoms by the database's own account are touched (soft-deleted,
or an id the API refuses), never one attached to a live agent, re-checked under a row lock in
the same transaction as the delete. ``files``, ``source_passages``, ``sources_agents`` and
``files_agents`` rows go with it through their ``ON DELETE CASCADE`` foreign keys. The flow
takes a verified backup first.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Connection

from ..postgres.database import PostgresDatabase
from ..postgres.letta_schema import connect, quote_ident

#: The id form the API accepts (letta.validators, 0.16.x); anything else answers 422.
API_SOURCE_ID = re.compile(
    r"^source-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


@dataclass
class PhantomRow:
    """What the database says about one row the API could not act on."""

    id: str
    name: str | None
    exists: bool
    is_deleted: bool
    id_accepted_by_api: bool
    live_agents: int

    @property
    def removable(self) -> bool:
        return (
            self.exists
            and (self.is_deleted or not self.id_accepted_by_api)
            and self.live_agents == 0
        )

    @property
    def why_not(self) -> str | None:
        if not self.exists:
            return "no such row (already gone)"
        if self.live_agents:
            return f"attached to {self.live_agents} live agent(s) in SQL"
        if not (self.is_deleted or not self.id_accepted_by_api):
            return "not a phantom in SQL (live row with a valid id)"
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "removable": self.removable, "why_not": self.why_not}


def _inspect(conn: Connection, schema: str, ids: list[str], lock: bool) -> list[PhantomRow]:
    q = quote_ident(schema)
    live = (
        "AND NOT a.is_deleted"
        if conn.execute(
            sa.text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = :s "
                "AND table_name = 'agents' AND column_name = 'is_deleted'"
            ),
            {"s": schema},
        ).scalar()
        else ""
    )
    rows = {
        r.id: r
        for r in conn.execute(
            sa.text(
                f"SELECT s.id, s.name, s.is_deleted FROM {q}.sources s "
                f"WHERE s.id = ANY(:ids){' FOR UPDATE' if lock else ''}"
            ),
            {"ids": ids},
        )
    }
    attached = dict(
        conn.execute(
            sa.text(
                f"SELECT sa.source_id, count(*) FROM {q}.sources_agents sa "
                f"JOIN {q}.agents a ON a.id = sa.agent_id "
                f"WHERE sa.source_id = ANY(:ids) {live} GROUP BY sa.source_id"
            ),
            {"ids": ids},
        ).all()
    )
    return [
        PhantomRow(
            id=i,
            name=rows[i].name if i in rows else None,
            exists=i in rows,
            is_deleted=bool(rows[i].is_deleted) if i in rows else False,
            id_accepted_by_api=bool(API_SOURCE_ID.match(i)),
            live_agents=int(attached.get(i, 0)),
        )
        for i in ids
    ]


def inspect_phantom_rows(db: PostgresDatabase, ids: list[str]) -> list[PhantomRow]:
    """Read-only: what the database holds for each id (for a plan)."""
    with connect(db) as conn:
        try:
            return _inspect(conn, db.db_schema or "public", ids, lock=False)
        finally:
            conn.rollback()


def delete_phantom_rows(db: PostgresDatabase, ids: list[str]) -> list[PhantomRow]:
    """Delete the rows among ``ids`` that are removable, in one transaction; return all rows
    as inspected under lock (``removable`` ones are gone after the commit)."""
    schema = db.db_schema or "public"
    with connect(db) as conn:
        try:
            rows = _inspect(conn, schema, ids, lock=True)
            doomed = [r.id for r in rows if r.removable]
            if doomed:
                conn.execute(
                    sa.text(f"DELETE FROM {quote_ident(schema)}.sources WHERE id = ANY(:ids)"),
                    {"ids": doomed},
                )
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    return rows


@task(name="inspect-phantom-rows", cache_policy=NO_CACHE)
def inspect_phantom_rows_task(db: PostgresDatabase, ids: list[str]) -> list[PhantomRow]:
    return inspect_phantom_rows(db, ids)


@task(name="delete-phantom-rows", cache_policy=NO_CACHE)
def delete_phantom_rows_task(db: PostgresDatabase, ids: list[str]) -> list[PhantomRow]:
    return delete_phantom_rows(db, ids)
