"""``audited_run``: every letta-ops flow run leaves one audit record, whatever happens.

Usage, inside a flow::

    with audited_run("upgrade", server, {"target": version, "store": store}) as record:
        profile = load_profile(server)
        record.update(server=profile.name, versions_from="0.11.7", versions_to=version)
        record.attach_store(object_store)          # where the JSON copy goes
        ...
        record.update(backup_set=f"{profile.name}/{set_id}", counts_before=..., renames=...)

On exit the record gets its end time and outcome (``succeeded``; ``failed`` with the error
text when an exception escapes -- the exception is re-raised untouched; ``cancelled`` for
``KeyboardInterrupt`` and Prefect's cancellation), and is written to the local audit store and,
when a backup store is attached, as JSON beside the backup set (write-once).

Why auditing can never fail a flow: a backup that worked must not turn red because the
history database was locked. Every audit failure is logged as a warning and swallowed.
Why redaction happens here: see :mod:`letta_ops.tasks.audit.redaction`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ..audit.redaction import redact_text, redact_value, secrets_from_environment
from ..audit.store import AuditRecord, AuditStore, write_record_object
from ..store.objects import ObjectExistsError, ObjectStore

OPERATOR_ENV = "LETTA_OPS_OPERATOR"
SCHEDULE = "schedule"

_RECORD_FIELDS = set(AuditRecord.model_fields) - {"format", "record_id", "details", "object_key"}
_MAX_ERROR_CHARS = 4000


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context
        return logging.getLogger("letta_ops.audit")


class RunAudit:
    """The live record of the current run; what ``audited_run`` yields."""

    def __init__(self, record: AuditRecord) -> None:
        self.record = record
        self._store: ObjectStore | None = None
        self._local: AuditStore | None = None
        self._secrets: set[str] = set()

    # -- what flows call -------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Set record fields (``versions_from``, ``backup_set``, ``counts_after``, ...).

        Unknown names go into ``details``; ``None`` values are ignored so that a flow can pass
        what it has without checking. Never raises.
        """
        try:
            renamed = "server" in fields and fields["server"] not in (None, self.record.server)
            for name, value in fields.items():
                if value is None:
                    continue
                if name == "store":
                    self.attach_store(value)
                elif name in _RECORD_FIELDS:
                    try:
                        setattr(self.record, name, _coerce(name, value))
                    except ValueError:  # the wrong shape for the column: keep it as a detail
                        self.record.details[name] = _jsonable(value)
                else:
                    self.record.details[name] = _jsonable(value)
            if renamed and self._local is not None:
                # The server is known now: a run killed from here on is found under its name.
                self._local.save(self.redacted())
        except Exception as exc:  # noqa: BLE001 - auditing never fails a flow
            _logger().warning("audit: could not record %s: %s", sorted(fields), _short(exc))

    def attach_store(self, store: ObjectStore | None) -> None:
        """The backup store that receives this run's JSON record on exit."""
        if store is not None:
            self._store = store

    def add_secrets(self, *values: str | None) -> None:
        """Values that must never appear in the record (e.g. a password read from a block)."""
        self._secrets.update(v for v in values if v)

    @property
    def record_id(self) -> str:
        return self.record.record_id

    def journal(self, store: ObjectStore | None = None, set_prefix: str | None = None):
        """The step journal of this run (``letta_ops.tasks.runs.journal``), in the local audit store
        and
        beside the backup set at ``set_prefix`` of ``store``."""
        from .journal import RunJournal

        return RunJournal(
            run_id=self.record_id,
            server=self.record.server,
            operation=self.record.operation,
            store=AuditStore.from_env(),
            object_store=store,
            set_prefix=set_prefix,
        )

    # -- what audited_run calls ------------------------------------------------------------

    def finish(self, outcome: str, error: str | None = None) -> AuditRecord:
        record = self.record
        if outcome == "succeeded" and record.outcome not in ("running", "succeeded"):
            outcome = record.outcome  # the flow said something more precise
        if outcome != "succeeded" and record.outcome not in ("running", "succeeded", "failed"):
            outcome = record.outcome  # e.g. "refused" set before raising
        record.outcome = outcome
        if error:
            record.error = error[-_MAX_ERROR_CHARS:]
        record.ended_at = datetime.now(UTC)
        return self.redacted()

    def redacted(self) -> AuditRecord:
        """A copy of the record with every secret removed."""
        secrets = self._secrets | secrets_from_environment()
        data = self.record.model_dump(mode="json")
        counts = {k: data.pop(k) for k in ("counts_before", "counts_after")}
        clean = redact_value(data, secrets)
        clean.update(redact_value(counts, secrets, drop_keys=False))  # keys are table names
        clean["record_id"] = data["record_id"]
        return AuditRecord.model_validate(clean)

    def write(self, record: AuditRecord, local: AuditStore | None = None) -> None:
        """Write to the backup store (if attached) then the local store; warn on failure."""
        log = _logger()
        if self._store is not None:
            try:
                write_record_object(self._store, record)
            except ObjectExistsError:
                log.warning("audit: record %s already in the backup store", record.record_id)
            except Exception as exc:  # noqa: BLE001
                record.object_key = None
                log.warning("audit: could not write the record to the backup store: %s", exc)
        try:
            (local or AuditStore.from_env()).save(record)
        except Exception as exc:  # noqa: BLE001
            log.warning("audit: could not write the record to the local audit store: %s", exc)


@contextmanager
def audited_run(
    operation: str,
    server: str | None,
    parameters: Mapping[str, Any] | None = None,
    store: ObjectStore | None = None,
    step_of_run: bool = False,
) -> Iterator[RunAudit]:
    """Record this flow run in the audit history (see the module docstring).

    ``server`` may be None until the flow resolved its profile: pass it later with
    ``record.update(server=...)``. ``parameters`` (default: the flow run's own parameters)
    are stored without secrets. ``step_of_run``: an operation that runs as a step of the
    current flow run (a backup's verification) rather than as a flow run of its own; its record
    is ``RUN_ID-OPERATION``, a child of the run, as a subflow's record would be.
    """
    try:
        audit = _start(operation, server, parameters, step_of_run)
    except Exception as exc:  # noqa: BLE001 - a bare record beats a failed flow
        _logger().warning("audit: could not read the run's context: %s", _short(exc))
        audit = RunAudit(
            AuditRecord(
                record_id=str(uuid.uuid4()),
                operation=operation,
                server=str(server or "unknown"),
                started_at=datetime.now(UTC),
            )
        )
    if store is not None:
        audit.attach_store(store)
    # Which work-pool worker ran it (fleet runs spread children over workers).
    audit.update(worker=os.environ.get("PREFECT__WORKER_NAME"))
    local = _save_running(audit)
    audit._local = local
    try:
        yield audit
    except Exception as exc:
        _close(audit, "failed", exc, local)
        raise
    except BaseException as exc:  # KeyboardInterrupt, Prefect cancellation / termination
        _close(audit, "cancelled", exc, local)
        raise
    else:
        _close(audit, "succeeded", None, local)


def _close(
    audit: RunAudit, outcome: str, exc: BaseException | None, local: AuditStore | None
) -> None:
    """Finish and write the record; whatever goes wrong here is a warning, never an error."""
    try:
        error = (_describe_error(exc) or type(exc).__name__) if exc is not None else None
        audit.write(audit.finish(outcome, error), local)
    except Exception as problem:  # noqa: BLE001 - auditing never fails a flow
        _logger().warning("audit: could not write the audit record: %s", _short(problem))


# --------------------------------------------------------------------------------------------
# Reading the Prefect run context
# --------------------------------------------------------------------------------------------


def _start(
    operation: str,
    server: str | None,
    parameters: Mapping[str, Any] | None,
    step_of_run: bool = False,
) -> RunAudit:
    context = run_context()
    run_id = context.get("flow_run_id")
    run_count = context.pop("run_count", 1) or 1
    own_parameters = context.pop("parameters", None) or {}
    if parameters is None:
        parameters = own_parameters
    record_id = run_id if run_id else str(uuid.uuid4())
    if run_id and run_count > 1:
        record_id = f"{run_id}-r{run_count}"
    if step_of_run and run_id:
        record_id = f"{record_id}-{operation}"
        context["parent_flow_run_id"] = run_id
    try:
        params = redact_value(dict(parameters))
    except Exception:  # noqa: BLE001
        params = {}
    record = AuditRecord(
        record_id=record_id,
        operation=operation,
        server=server or "unknown",
        parameters=params,
        started_at=datetime.now(UTC),
        # Who runs it, so a record left 'running' by a killed process can be told dead.
        details={"host": socket.gethostname(), "pid": os.getpid()},
        **context,
    )
    return RunAudit(record)


def _save_running(audit: RunAudit) -> AuditStore | None:
    """Write the record as ``running`` now, so a run killed outright still shows up."""
    try:
        local = AuditStore.from_env()
        local.save(audit.redacted())
        return local
    except Exception as exc:  # noqa: BLE001
        _logger().warning("audit: the local audit store is not writable: %s", _short(exc))
        return None


def run_context() -> dict[str, Any]:
    """Flow run, deployment and trigger of the current Prefect run (empty outside a run)."""
    found: dict[str, Any] = {"triggered_by": None}
    flow_run = None
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        flow_run = getattr(ctx, "flow_run", None)
        if flow_run is not None:
            found.update(
                flow_run_id=str(flow_run.id),
                flow_run_name=flow_run.name,
                flow_name=getattr(getattr(ctx, "flow", None), "name", None),
                parent_flow_run_id=_parent_run_id(flow_run),
                deployment_id=str(flow_run.deployment_id) if flow_run.deployment_id else None,
                run_count=flow_run.run_count or 1,
                parameters=dict(flow_run.parameters or {}),
            )
            if flow_run.deployment_id:
                from prefect import runtime

                found["deployment_name"] = runtime.deployment.name
    except Exception as exc:  # noqa: BLE001
        _logger().warning("audit: could not read the Prefect run context: %s", _short(exc))
    found["triggered_by"] = triggered_by(flow_run)
    return found


def _parent_run_id(flow_run: Any) -> str | None:
    """The parent flow run, for a subflow (``verify`` inside ``backup``)."""
    if not getattr(flow_run, "parent_task_run_id", None):
        return None
    try:
        from prefect import runtime

        parent = runtime.flow_run.parent_flow_run_id
        return str(parent) if parent else None
    except Exception:  # noqa: BLE001
        return None


def triggered_by(flow_run: Any = None, environ: Mapping[str, str] | None = None) -> str:
    """Who started the run: ``schedule``, the Prefect user, the operator, or the OS user.

    In that order: a run a deployment schedule created says ``schedule`` (even if the serving
    process has ``LETTA_OPS_OPERATOR`` set); a run a Prefect user or automation created says
    who; another deployment run says ``prefect-api`` (Prefect recorded no user); a local run
    says ``LETTA_OPS_OPERATOR`` (set by ``letta-ops --operator``), else ``local:OS_USER``.
    """
    env = os.environ if environ is None else environ
    if flow_run is not None:
        created_by = getattr(flow_run, "created_by", None)
        kind = (getattr(created_by, "type", None) or "").lower()
        name = getattr(created_by, "display_value", None) or ""
        if getattr(flow_run, "auto_scheduled", False) or "schedule" in kind:
            return SCHEDULE
        if name:
            return f"{kind}:{name}" if kind and kind != "user" else name
        if getattr(flow_run, "deployment_id", None):
            return "prefect-api"
    operator = (env.get(OPERATOR_ENV) or "").strip()
    if operator:
        return operator[:200]
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------


def server_counts(
    database: Any, inventory: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Agent and table counts of a Letta database for ``counts_before`` / ``counts_after``.

    ``inventory`` is an :func:`letta_ops.tasks.postgres.letta_inventory.agent_inventory` result the
    flow already
    has (saves a query). Returns None, with a warning, when the database cannot be read:
    counting is for the record, never a reason to fail.
    """
    try:
        from ..postgres.letta_inventory import agent_inventory
        from ..postgres.letta_schema import table_row_counts

        agents = inventory if inventory is not None else agent_inventory(database)
        tables = table_row_counts(database)
        return counts_summary(tables, agents)
    except Exception as exc:  # noqa: BLE001
        _logger().warning("audit: could not count the database: %s", _short(exc))
        return None


def counts_summary(
    tables: Mapping[str, int], agents: Mapping[str, Mapping[str, Any]] | int | None = None
) -> dict[str, Any]:
    """``{"agents", "messages", "blocks", "rows", "tables": {table: rows}}`` (what is known)."""
    summary: dict[str, Any] = {}
    if isinstance(agents, int):
        summary["agents"] = agents
    elif agents is not None:
        summary["agents"] = len(agents)
        summary["messages"] = sum(int(a.get("messages") or 0) for a in agents.values())
        summary["blocks"] = sum(int(a.get("blocks") or 0) for a in agents.values())
    summary["rows"] = sum(tables.values())
    summary["tables"] = dict(sorted(tables.items()))
    return summary


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _coerce(name: str, value: Any) -> Any:
    value = _jsonable(value)
    if name in ("versions_from", "versions_to", "rollback_outcome", "outcome", "error"):
        return str(value)
    if name == "renames" and isinstance(value, dict):
        return [{"from": k, "to": v} for k, v in value.items()]
    if name == "server":
        from ..server_naming import sanitize_server_name

        return sanitize_server_name(str(value))
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON data from pydantic models, dataclasses and the like."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    return str(value)


def _describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return redact_text(text, secrets_from_environment())


def _short(exc: BaseException) -> str:
    return redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
