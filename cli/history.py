"""``letta-ops history``: who ran what, when, on which server, and how it ended.

``letta-ops history`` lists the audit store (:mod:`letta_ops.tasks.audit.store`) newest first, each
row with a link to its Prefect flow run; ``--rebuild`` first reloads the store from the JSON copies
in the backup store. ``letta-ops history show RUN`` prints one whole record plus what Prefect
still knows about the run (artifacts, warning and error logs); when the Prefect API cannot be
reached that part is replaced by one line, because the audit store is the durable answer.

The list needs no Prefect: the audit store is SQL, the links' base comes from
``PREFECT_UI_URL`` / ``PREFECT_API_URL`` (Prefect's settings are read only when a settings
file might set them). Only ``history show`` asks the Prefect API, and only when one is set.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..tasks.errors import EXIT_OK, Failed, Refused
from .options import Parser, common_options, json_list_options, store_options
from .output import emit, emit_rows, render_mapping, render_table

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PREFECT_TIMEOUT_SECONDS = 10.0


# --------------------------------------------------------------------------- arguments


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """argparse type: ``2026-11-01``, ``2026-11-01T02:15`` (UTC unless an offset is given),
    or an age such as ``90m``, ``12h``, ``7d``, ``2w``."""
    text = value.strip()
    match = _RELATIVE.match(text.lower())
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time; use an ISO date such as 2026-11-01 or 2026-11-01T02:15, "
            "or an age such as 12h or 7d."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``history`` and ``history show`` on the ``letta-ops`` parser."""
    p = sub.add_parser(
        "history",
        # --json and the deprecated --json-list (the plain list), one or the other.
        parents=[common_options(with_json=False), json_list_options("records"), store_options()],
        help="the audit history: every letta-ops run, who started it and how it ended",
        description="List the audit records of letta-ops runs (newest first) from the local "
        "audit store (LETTA_OPS_AUDIT_URL, default a SQLite file in the user's data "
        "directory), each with a link to its Prefect flow run. --rebuild reloads the store "
        "from the JSON records kept in the backup store. 'history show RUN' prints one run.",
    )
    p.add_argument("--operation", metavar="OP", help="only this operation (backup, upgrade...)")
    p.add_argument("--outcome", metavar="OUTCOME", help="only this outcome (succeeded, failed...)")
    p.add_argument("--since", type=parse_time, metavar="TIME", help="started at or after")
    p.add_argument("--until", type=parse_time, metavar="TIME", help="started at or before")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (50; 0: all)")
    p.add_argument(
        "--subflows",
        action="store_true",
        help="also list runs started inside another run (a backup's verify, the pre-upgrade "
        "backup)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="first reload the local audit store from the backup store's JSON records",
    )
    p.set_defaults(func=cmd_history, history_action=None)
    hsub = p.add_subparsers(dest="history_action", parser_class=Parser, metavar="{show}")
    show = hsub.add_parser(
        "show",
        parents=[common],
        help="one run's whole record, its Prefect artifacts and warning/error logs",
    )
    show.add_argument("run", metavar="RUN", help="flow-run id (or its first characters) or name")
    show.set_defaults(func=cmd_history_show)


# --------------------------------------------------------------------------- history


def cmd_history(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since > args.until:
        raise Refused("--since is after --until; nothing can match.")
    if args.limit < 0:
        raise Refused("--limit must be 0 (all) or more.")
    audit = _open_audit_store()
    if args.rebuild:
        from ..blocks.server_profile import open_backup_store
        from ..tasks.audit.store import rebuild_from_object_store

        store = open_backup_store(args.store, args.server)
        result = rebuild_from_object_store(audit, store)
        print(
            f"letta-ops: loaded {result['loaded']} audit record(s) from {result['store']} "
            f"into {audit.describe()}",
            file=sys.stderr,
        )
        for problem in result["problems"]:
            print(f"letta-ops: skipped {problem['key']}: {problem['error']}", file=sys.stderr)
    records = audit.query(
        server=_server_filter(args.server),
        operation=args.operation,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
        limit=args.limit or None,
        top_level_only=not args.subflows,
    )
    ui = prefect_ui_url()
    rows = [history_row(r, ui) for r in records]
    if args.json or args.json_list:
        rows = [
            {**r.model_dump(mode="json"), "prefect_url": row["link"]}
            for r, row in zip(records, rows, strict=True)
        ]
    emit_rows(rows, "records", args, render=_render_history)
    return EXIT_OK


def _open_audit_store():
    from ..tasks.audit.store import AuditStore, AuditStoreError

    audit = AuditStore.from_env()
    try:
        audit.engine  # noqa: B018 - opens and migrates, so a bad URL fails here, clearly
    except AuditStoreError as exc:
        raise Refused(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's many connection errors
        raise Failed(
            f"The audit store {audit.describe()} cannot be opened: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc
    return audit


def _server_filter(server: str | None) -> str | None:
    """``--server`` filters by the name runs were recorded under (saved blocks' names)."""
    if not server:
        return None
    from ..tasks.server_naming import sanitize_server_name

    return sanitize_server_name(server)


def history_row(record: Any, ui_url: str | None) -> dict[str, Any]:
    versions = record.versions_from or ""
    if record.versions_to and record.versions_to != record.versions_from:
        versions = f"{versions or '?'} -> {record.versions_to}"
    return {
        "started": record.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "operation": record.operation,
        "server": record.server,
        "versions": versions,
        "outcome": record.outcome,
        "rollback": record.rollback_outcome or "",
        "by": record.triggered_by or "",
        "backup_set": (record.backup_set or "").split("/", 1)[-1],
        "link": flow_run_link(ui_url, record.flow_run_id) or record.record_id,
    }


def _render_history(rows: list[dict[str, Any]]) -> str:
    columns = [
        "started",
        "operation",
        "server",
        "versions",
        "outcome",
        "rollback",
        "by",
        "backup_set",
        "link",
    ]
    return render_table(rows, columns)


# --------------------------------------------------------------------------- history show


def cmd_history_show(args: argparse.Namespace) -> int:
    audit = _open_audit_store()
    matches = audit.find(args.run)
    if not matches:
        raise Refused(
            f"No audit record matches {args.run!r} in {audit.describe()}; see 'letta-ops "
            "history' (or 'history --rebuild' to reload it from the backup store)."
        )
    if len(matches) > 1:
        ids = ", ".join(m.record_id for m in matches[:5])
        raise Refused(f"{args.run!r} matches {len(matches)} runs ({ids}); give more of the id.")
    record = matches[0]
    ui = prefect_ui_url()
    prefect = read_prefect_run(record.flow_run_id) if record.flow_run_id else None
    children = audit.query(parent=record.flow_run_id) if record.flow_run_id else []
    result = {
        "record": record.model_dump(mode="json"),
        "prefect_url": flow_run_link(ui, record.flow_run_id),
        "subflow_runs": [history_row(c, ui) for c in children],
        "prefect": prefect,
    }
    emit(result, args.json, render=_render_show, versioned=True)
    return EXIT_OK


def _render_show(result: dict[str, Any]) -> str:
    import json

    record = dict(result["record"])
    lines = [f"# {record['operation']} of {record['server']}: {record['outcome']}", ""]
    simple = {
        k: v
        for k, v in record.items()
        if v not in (None, "", {}, []) and not isinstance(v, dict | list)
    }
    if result.get("prefect_url"):
        simple["prefect_url"] = result["prefect_url"]
    lines.append(render_mapping(simple))
    for name in ("parameters", "counts_before", "counts_after", "renames", "details"):
        value = record.get(name)
        if value:
            lines += ["", f"{name}:", json.dumps(value, indent=2, sort_keys=True, default=str)]
    if result.get("subflow_runs"):
        lines += ["", "Runs started inside this one:"]
        lines += [
            f"- {r['started']} {r['operation']} {r['outcome']} {r['link']}"
            for r in result["subflow_runs"]
        ]
    prefect = result.get("prefect")
    if prefect is None:
        lines += ["", "Prefect: this run has no flow-run id (it ran outside Prefect)."]
    elif prefect.get("unavailable"):
        lines += ["", f"Prefect: {prefect['unavailable']}"]
    else:
        lines += ["", f"Prefect artifacts ({len(prefect['artifacts'])}):"]
        for artifact in prefect["artifacts"]:
            lines += [f"- {artifact['key'] or '(no key)'} [{artifact['type']}]"]
            if artifact["type"] == "markdown" and artifact.get("data"):
                lines += ["  " + line for line in str(artifact["data"]).splitlines()]
        lines += ["", f"Prefect warning/error logs ({len(prefect['logs'])}):"]
        lines += [f"- {log['time']} {log['level']} {log['message']}" for log in prefect["logs"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- Prefect


def _prefect_files_may_set_url() -> bool:
    """Whether a Prefect settings file (the profiles file, or ``.env``, ``prefect.toml`` or
    ``pyproject.toml``'s ``[tool.prefect]`` in this directory) may set the API or UI URL:
    only then is it worth loading Prefect's settings (about two seconds) to find out."""
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    for path in (profiles.expanduser(), Path(".env"), Path("prefect.toml"), Path("pyproject.toml")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.name == "prefect.toml":
            return True
        if path.name == "pyproject.toml":
            if "tool.prefect" in text:
                return True
        elif "PREFECT_API_URL" in text or "PREFECT_UI_URL" in text:
            return True
    return False


def prefect_ui_url() -> str | None:
    """``PREFECT_UI_URL``, else derived from ``PREFECT_API_URL`` (drop the ``/api`` suffix).

    Prefect's settings answer when Prefect is loaded already (a flow run, a test harness) or
    when a settings file may set the URLs; otherwise the environment does, without Prefect.
    """
    ui = os.environ.get("PREFECT_UI_URL")
    api = os.environ.get("PREFECT_API_URL")
    if "prefect.settings" in sys.modules or (not ui and not api and _prefect_files_may_set_url()):
        try:
            from prefect.settings import get_current_settings

            settings = get_current_settings()
            ui = settings.ui_url
            api = settings.api.url
        except Exception:  # noqa: BLE001 - no links rather than no history
            pass
    if ui:
        return str(ui).rstrip("/")
    if api:
        return re.sub(r"/api/?$", "", str(api).rstrip("/"))
    return None


def flow_run_link(ui_url: str | None, flow_run_id: str | None) -> str | None:
    if not ui_url or not flow_run_id:
        return None
    return f"{ui_url}/runs/flow-run/{flow_run_id}"


def read_prefect_run(flow_run_id: str) -> dict[str, Any]:
    """The run's state, artifacts and WARNING+ logs, or ``{"unavailable": reason}``.

    Without ``PREFECT_API_URL`` nothing is read: Prefect would start a temporary server that
    does not hold this run anyway.
    """
    from ..tasks.audit.redaction import redact_text, redact_value, secrets_from_environment

    if not prefect_ui_url():
        return {
            "unavailable": "no Prefect API is configured (PREFECT_API_URL); artifacts and "
            "logs not shown."
        }
    secrets = secrets_from_environment()
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            LogFilter,
            LogFilterFlowRunId,
            LogFilterLevel,
        )
        from prefect.client.schemas.sorting import LogSort
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        run_id = UUID(flow_run_id)
        # One attempt: an operator reading history should not wait through retries.
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(
                sync_client=True, httpx_settings={"timeout": _PREFECT_TIMEOUT_SECONDS}
            ) as client,
        ):
            flow_run = client.read_flow_run(run_id)
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[run_id]),
                    level=LogFilterLevel(ge_=30),
                ),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
            )
    except Exception as exc:  # noqa: BLE001 - any failure degrades to one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {
            "unavailable": f"the Prefect API could not be read ({redact_text(reason, secrets)}); "
            "artifacts and logs not shown."
        }
    import logging

    return {
        "state": flow_run.state_name,
        "tags": list(flow_run.tags),
        "artifacts": [
            redact_value(
                {
                    "key": a.key,
                    "type": a.type,
                    "description": a.description,
                    "created": a.created.isoformat() if a.created else None,
                    "data": a.data,
                },
                secrets,
            )
            for a in artifacts
        ],
        "logs": [
            {
                "time": log.timestamp.isoformat(),
                "level": logging.getLevelName(log.level),
                "message": redact_text(log.message, secrets),
            }
            for log in logs
        ],
    }
