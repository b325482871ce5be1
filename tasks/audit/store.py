"""The audit history: one record per run of a letta-ops flow, in a database of its own.

Why its own database: the question "who upgraded prod, when, from which version, and what
happened?" must have an answer months later, and an upgrade drops and recreates the Letta
database -- so the history never lives there. The default is an embedded SQLite file under the
user's data directory (``~/.local/share/letta-ops/audit.db`` on Linux); a team points
``LETTA_OPS_AUDIT_URL`` at a shared PostgreSQL database. The schema changes through the alembic
migrations in :mod:`letta_ops.tasks.audit.migrations`, applied on first use, never by
``create_all``.

Every record is also written once as JSON into the backup store (:func:`record_key`), so
:func:`rebuild_from_object_store` can recreate this database after it is lost.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..store.objects import ObjectExistsError, ObjectStore

AUDIT_FORMAT = "letta-ops/audit-record@1"
AUDIT_URL_ENV = "LETTA_OPS_AUDIT_URL"
#: Directory, inside a backup set, of the audit records of the runs that used or produced it.
SET_AUDIT_DIR = "audit"
#: Top-level directory for runs without a backup set. Its keys have exactly two segments so the
#: backup catalog (which groups ``SERVER/SET_ID/...``) never mistakes them for a set -- and
#: retention never prunes them as an "incomplete set".
STORE_AUDIT_DIR = "audit"


metadata = MetaData()

#: The table as the latest migration leaves it; queries use it, migrations create it.
audit_runs = Table(
    "audit_runs",
    metadata,
    Column("record_id", String(80), primary_key=True),
    Column("operation", String(40), nullable=False, index=True),
    Column("server", String(80), nullable=False, index=True),
    Column("flow_run_id", String(40), index=True),
    Column("flow_run_name", String(200)),
    Column("flow_name", String(200)),
    Column("parent_flow_run_id", String(40)),
    Column("deployment_id", String(40)),
    Column("deployment_name", String(200)),
    Column("triggered_by", String(200)),
    Column("parameters", JSON),
    Column("versions_from", String(40)),
    Column("versions_to", String(40)),
    Column("backup_set", String(200)),
    Column("counts_before", JSON),
    Column("counts_after", JSON),
    Column("renames", JSON),
    Column("outcome", String(40), nullable=False, index=True),
    Column("error", Text),
    Column("rollback_outcome", String(200)),
    Column("started_at", DateTime(timezone=True), nullable=False, index=True),
    Column("ended_at", DateTime(timezone=True)),
    Column("details", JSON),
    Column("object_key", String(400)),
)


class AuditRecord(BaseModel):
    """What one flow run did.

    No field ever holds a secret (see :mod:`letta_ops.tasks.audit.redaction`).
    """

    model_config = ConfigDict(validate_assignment=True)

    format: str = AUDIT_FORMAT
    record_id: str = Field(description="The flow-run id (suffixed on retries), else a uuid.")
    operation: str
    server: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    parent_flow_run_id: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    triggered_by: str | None = Field(
        default=None, description="'schedule', the operator's name, or the Prefect user."
    )
    parameters: dict[str, Any] = Field(default_factory=dict)
    versions_from: str | None = None
    versions_to: str | None = None
    backup_set: str | None = Field(default=None, description="SERVER/SET_ID used or produced.")
    counts_before: dict[str, Any] | None = None
    counts_after: dict[str, Any] | None = None
    renames: list[dict[str, Any]] | None = None
    outcome: str = "running"
    error: str | None = None
    rollback_outcome: str | None = None
    started_at: datetime
    ended_at: datetime | None = None
    details: dict[str, Any] = Field(
        default_factory=dict, description="Any other fact a flow recorded."
    )
    object_key: str | None = Field(
        default=None, description="Where the JSON copy went in the backup store."
    )

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AuditRecord:
        return cls.model_validate_json(data)

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


# --------------------------------------------------------------------------------------------
# Where the store is
# --------------------------------------------------------------------------------------------


def default_audit_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path("letta-ops", appauthor=False) / "audit.db"


def audit_store_url(environ: Mapping[str, str] | None = None) -> str:
    """``LETTA_OPS_AUDIT_URL`` if set, else the SQLite file under the user's data directory."""
    env = os.environ if environ is None else environ
    url = (env.get(AUDIT_URL_ENV) or "").strip()
    if url:
        return url
    return f"sqlite:///{default_audit_path()}"


def describe_url(url: str) -> str:
    """The store's URL for messages: never its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by create_engine
        return re.sub(r"://[^@/]*@", "://***@", url)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------

_MIGRATE_LOCK = threading.Lock()
_COLUMNS = [c.name for c in audit_runs.columns]


class AuditStoreError(RuntimeError):
    """The audit store cannot be opened or used; the message says which and why."""


class AuditStore:
    """Read and write audit records in the SQL database at ``url``."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or audit_store_url()
        self._engine: Engine | None = None

    @classmethod
    def from_env(cls) -> AuditStore:
        return cls(audit_store_url())

    def describe(self) -> str:
        return describe_url(self.url)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
            self.migrate()
        return self._engine

    def _create_engine(self) -> Engine:
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise AuditStoreError(
                f"The audit store URL {describe_url(self.url)!r} is not a database URL; use "
                "sqlite:////ABSOLUTE/PATH or postgresql+pg8000://USER@HOST/DB."
            ) from exc
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Several flows (a backup and its verify subflow) may write at once.
            kwargs["connect_args"] = {"timeout": 30}
        elif parsed.drivername in ("postgresql", "postgres"):
            # No driver named: use pg8000, which letta-ops installs (sqlalchemy would pick psycopg).
            parsed = parsed.set(drivername="postgresql+pg8000")
        if parsed.drivername == "postgresql+pg8000":
            # libpq's TLS settings (?sslmode=..., PGSSL*) as pg8000 takes them.
            from ..postgres.letta_schema import pg8000_connect_args
            from ..postgres.tls import CONNECTION_QUERY_PARAMETERS, tls_settings

            tls = tls_settings(self.url)
            parsed = parsed.difference_update_query(CONNECTION_QUERY_PARAMETERS)
            kwargs["connect_args"] = pg8000_connect_args(tls)
        try:
            return create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise AuditStoreError(
                f"The audit store URL {describe_url(self.url)!r} is not a database URL "
                "letta-ops can use; use sqlite:////ABSOLUTE/PATH or "
                "postgresql+pg8000://USER@HOST/DB."
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest migration (on every open: a store may have been
        deleted or upgraded by a newer letta-ops since; at head this is one query)."""
        from .migrations import upgrade_to_head

        assert self._engine is not None
        with _MIGRATE_LOCK:
            upgrade_to_head(self._engine)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- writing -----------------------------------------------------------------------------

    def save(self, record: AuditRecord) -> None:
        """Insert the record, or replace the row of the same ``record_id``."""
        row = _to_row(record)
        with self.engine.begin() as conn:
            found = conn.execute(
                select(audit_runs.c.record_id).where(audit_runs.c.record_id == record.record_id)
            ).first()
            if found:
                conn.execute(
                    update(audit_runs)
                    .where(audit_runs.c.record_id == record.record_id)
                    .values(**row)
                )
            else:
                conn.execute(insert(audit_runs).values(**row))

    def delete_all(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(audit_runs)).rowcount or 0

    # -- reading -----------------------------------------------------------------------------

    def query(
        self,
        server: str | None = None,
        operation: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        top_level_only: bool = False,
        parent: str | None = None,
    ) -> list[AuditRecord]:
        """Records matching every given filter, newest first.

        ``top_level_only`` leaves out runs started inside another flow run (the verify of a
        backup, the pre-upgrade backup); ``parent`` selects exactly those of one run.
        """
        stmt = select(audit_runs).order_by(audit_runs.c.started_at.desc())
        if top_level_only:
            stmt = stmt.where(audit_runs.c.parent_flow_run_id.is_(None))
        if parent:
            stmt = stmt.where(audit_runs.c.parent_flow_run_id == parent)
        if server:
            stmt = stmt.where(audit_runs.c.server == server)
        if operation:
            stmt = stmt.where(audit_runs.c.operation == operation)
        if outcome:
            stmt = stmt.where(audit_runs.c.outcome == outcome)
        if since:
            stmt = stmt.where(audit_runs.c.started_at >= _utc(since))
        if until:
            stmt = stmt.where(audit_runs.c.started_at <= _utc(until))
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [_from_row(r._mapping) for r in conn.execute(stmt)]

    def find(self, run: str) -> list[AuditRecord]:
        """Records whose record id, flow-run id or flow-run name is ``run`` (or starts so)."""
        run = run.strip()
        if not run:
            return []
        c = audit_runs.c
        exact = select(audit_runs).where(
            (c.record_id == run) | (c.flow_run_id == run) | (c.flow_run_name == run)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(exact))
            if not rows:
                like = run.replace("%", "").replace("_", "\\_") + "%"
                rows = list(
                    conn.execute(
                        select(audit_runs).where(
                            c.record_id.like(like, escape="\\")
                            | c.flow_run_id.like(like, escape="\\")
                        )
                    )
                )
        return [_from_row(r._mapping) for r in rows]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _to_row(record: AuditRecord) -> dict[str, Any]:
    """The row for ``record``; text longer than its column is cut (PostgreSQL would refuse
    the whole row, and a shortened field beats a lost record; the JSON copy keeps it all)."""
    data = record.model_dump(mode="json")
    row = {name: data.get(name) for name in _COLUMNS}
    for column in audit_runs.columns:
        length = getattr(column.type, "length", None)
        value = row.get(column.name)
        if length and isinstance(value, str) and len(value) > length:
            row[column.name] = value[: length - 1] + "…"
    row["started_at"] = _utc(record.started_at)
    row["ended_at"] = _utc(record.ended_at) if record.ended_at else None
    return row


def _from_row(row: Mapping[str, Any]) -> AuditRecord:
    data = dict(row)
    for name in ("started_at", "ended_at"):
        if data.get(name) is not None:
            data[name] = _utc(data[name])  # SQLite returns naive datetimes
    data["parameters"] = data.get("parameters") or {}
    data["details"] = data.get("details") or {}
    return AuditRecord.model_validate(data)


# --------------------------------------------------------------------------------------------
# The JSON copy in the backup store
# --------------------------------------------------------------------------------------------


def record_key(record: AuditRecord, set_complete: bool) -> str:
    """Where the record's JSON goes in the backup store (relative to the store's prefix).

    * beside its backup set, ``SERVER/SET_ID/audit/RECORD_ID.json``, when the run used or
      produced a *complete* set (one with a manifest): the set and the story of how it was
      made or used travel together;
    * else ``audit/SERVER--STARTED--RECORD_ID.json`` (a failed backup's set may never get its
      manifest and be pruned as incomplete; the record must outlive it).
    """
    from ..server_naming import sanitize_server_name
    from ..sets.manifest import parse_set_reference, set_prefix

    name = _safe_segment(record.record_id)
    if record.backup_set and set_complete:
        server, set_id = parse_set_reference(record.backup_set)
        return f"{set_prefix(server, set_id)}{SET_AUDIT_DIR}/{name}.json"
    stamp = _utc(record.started_at).strftime("%Y%m%dT%H%M%SZ")
    return f"{STORE_AUDIT_DIR}/{sanitize_server_name(record.server)}--{stamp}--{name}.json"


def _safe_segment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip(".-")[:80] or "record"


def set_is_complete(store: ObjectStore, backup_set: str) -> bool:
    from ..sets.manifest import MANIFEST_NAME, parse_set_reference, set_prefix

    server, set_id = parse_set_reference(backup_set)
    return store.exists(set_prefix(server, set_id) + MANIFEST_NAME)


def write_record_object(store: ObjectStore, record: AuditRecord) -> str:
    """Write the record's JSON once into the backup store; returns its key.

    Write-once: an existing key is never replaced (:class:`ObjectExistsError` propagates).
    """
    complete = bool(record.backup_set) and set_is_complete(store, record.backup_set or "")
    key = record_key(record, complete)
    record.object_key = key
    store.put_bytes(key, record.to_json())
    return key


def iter_record_keys(store: ObjectStore) -> Iterable[str]:
    """Every audit record key in the store, in both locations."""
    for obj in store.list(""):
        parts = obj.key.split("/")
        if not obj.key.endswith(".json"):
            continue
        if len(parts) == 2 and parts[0] == STORE_AUDIT_DIR:
            yield obj.key
        elif len(parts) == 4 and parts[2] == SET_AUDIT_DIR:
            yield obj.key


def rebuild_from_object_store(
    audit: AuditStore, store: ObjectStore, replace: bool = False
) -> dict[str, Any]:
    """Load every JSON record from the backup store into the audit store.

    Records already present are replaced by the stored copy (it is the final state of the
    run); with ``replace`` the local store is emptied first. Unreadable objects are reported,
    never fatal.
    """
    loaded, problems = 0, []
    records = []
    for key in iter_record_keys(store):
        try:
            record = AuditRecord.from_json(store.read_bytes(key))
        except (ValueError, OSError) as exc:
            problems.append({"key": key, "error": str(exc).splitlines()[0]})
            continue
        if not record.format.startswith("letta-ops/audit-record@"):
            continue
        record.object_key = key
        records.append(record)
    if replace:
        audit.delete_all()
    for record in records:
        audit.save(record)
        loaded += 1
    return {"loaded": loaded, "problems": problems, "store": store.describe()}


def preserve_set_records(store: ObjectStore, prefixes: Iterable[str]) -> list[str]:
    """Copy the audit records beside backup sets about to be pruned to ``audit/``.

    Why: retention deletes a whole set prefix, and the history of the runs that made or used
    the set must outlive it. Copies are write-once; an existing copy is left alone.
    """
    copied = []
    for prefix in prefixes:
        for obj in store.list(f"{prefix.rstrip('/')}/{SET_AUDIT_DIR}/"):
            try:
                record = AuditRecord.from_json(store.read_bytes(obj.key))
                key = record_key(record, set_complete=False)
                record.object_key = key
                store.put_bytes(key, record.to_json())
                copied.append(key)
            except ObjectExistsError:
                continue
    return copied


__all__ = [
    "AUDIT_URL_ENV",
    "AuditRecord",
    "AuditStore",
    "AuditStoreError",
    "audit_store_url",
    "rebuild_from_object_store",
    "record_key",
    "write_record_object",
]
