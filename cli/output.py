"""What the command line prints: human tables, ``--json`` documents, progress on stderr.

``--json`` documents (README, "Scripting: --json"): datetimes are ISO-8601 strings, paths and
ids strings, pydantic models their JSON dump; the outputs scripts read for state (``runtime
status``, ``verify``, ``upgrade``, ``rollback``, ``backups list``, ``history``) carry
``"schema_version"`` at the top level (the listings their rows under ``sets`` / ``records``;
:func:`emit_rows`).
Progress and errors go to stderr, so stdout stays one JSON document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from ..tasks.errors import Refused
from ..tasks.runs.report_schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]


def json_value(value: Any) -> Any:
    """``json.dumps``' ``default``: the JSON form of what the standard encoder lacks."""
    # Imported here: --help never needs them (dataclasses alone loads inspect).
    import dataclasses
    from datetime import date, datetime, time
    from enum import Enum
    from pathlib import PurePath
    from uuid import UUID

    if isinstance(value, datetime):  # UTC as "Z", as the reports' pydantic dumps write it
        text = value.isoformat()
        return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, PurePath | UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    return str(value)  # anything else: its text, never a crash after the work is done


def to_json(result: Any, versioned: bool = False) -> str:
    """The ``--json`` document of ``result``; ``versioned`` puts ``schema_version`` first in a
    dict result (a flow's report carries its own)."""
    if versioned and isinstance(result, dict):
        result = {"schema_version": SCHEMA_VERSION, **result}
    return json.dumps(result, indent=2, default=json_value)


def emit(
    result: Any,
    as_json: bool,
    render: Callable[[Any], str] | None = None,
    versioned: bool = False,
) -> None:
    """Print ``result``: as JSON with ``--json``, else through ``render`` (or as a mapping)."""
    if as_json:
        print(to_json(result, versioned))
    elif render is not None:
        print(render(result))
    else:
        print(render_mapping(result))


def emit_rows(rows: list[Any], key: str, args: Any, render: Callable[[list[Any]], str]) -> None:
    """Print the rows of a listing command (``backups list``, ``history``): with ``--json``
    ``{"schema_version", KEY: rows}``; with the deprecated ``--json-list`` the plain list those
    commands printed before schema 1 (and one deprecation line on stderr); else ``render``."""
    if getattr(args, "json_list", False):
        print(
            f"letta-ops: warning: --json-list is deprecated and will be removed in the next "
            f'release; use --json (the same rows under "{key}", with "schema_version").',
            file=sys.stderr,
        )
        print(to_json(rows))
    elif args.json:
        print(to_json({key: rows}, versioned=True))
    else:
        print(render(rows))


def render_mapping(data: dict) -> str:
    width = max((len(str(k)) for k in data), default=0)
    return "\n".join(f"{str(k).ljust(width)}  {v}" for k, v in data.items())


def render_table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def progress(message: str) -> None:
    """Progress goes to stderr so that ``--json`` output on stdout stays parseable."""
    print(f"letta-ops: {message}", file=sys.stderr, flush=True)


def confirm(plan_text: str, question: str, what: str) -> None:
    """Show the plan and ask on a terminal; refuse (exit 2, nothing changed) without one.

    Asked from inside a run (the plan is the run's own), so progress bars on the terminal are
    paused while the operator reads and answers.
    """
    with RichProgress.paused():
        print(plan_text, file=sys.stderr)
        if not sys.stdin.isatty():
            raise Refused(
                f"Refusing to {what} without confirmation; review the plan above and rerun "
                "with --yes."
            )
        if input(f"{question} [y/N] ").strip().lower() not in {"y", "yes"}:
            raise Refused(f"{what.capitalize()} cancelled; nothing was changed.")


class RichProgress:
    """Progress bars on stderr for exports and uploads (stdout stays clean for --json)."""

    #: The bars on the terminal now, if any (one command runs one set of bars).
    active: ClassVar[RichProgress | None] = None

    @classmethod
    @contextmanager
    def paused(cls) -> Iterator[None]:
        """Stop redrawing the bars while something else writes to the terminal."""
        bars = cls.active
        if bars is None:
            yield
            return
        bars._progress.stop()
        try:
            yield
        finally:
            bars._progress.start()

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bytes = DownloadColumn()
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        RichProgress.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        RichProgress.active = None
        self._progress.stop()

    def start(self, label: str, total: int | None, unit: str) -> None:
        self._tasks[label] = self._progress.add_task(f"{label} ({unit})", total=total)

    def advance(self, label: str, amount: int = 1) -> None:
        if label in self._tasks:
            self._progress.advance(self._tasks[label], amount)

    def finish(self, label: str) -> None:
        if label in self._tasks:
            task_id = self._tasks[label]
            task = self._progress.tasks[task_id]
            self._progress.update(task_id, total=task.completed)


def with_progress(run: Callable[[], Any]) -> Any:
    """Run ``run()`` with progress bars for what it reports through
    :mod:`letta_ops.tasks.runs.progress_events`."""
    from ..tasks.runs import progress_events

    with RichProgress() as bars:
        progress_events.install(bars)
        try:
            return run()
        finally:
            progress_events.install(None)


def phases_lines(phases: list[Any]) -> list[str]:
    """A report's phase timings as one compact line (``phases: start-up 0.4 s, ...``), or no
    line when it has none: where the run's time went, beside what it did."""
    if not phases:
        return []
    return ["phases: " + ", ".join(f"{p.name} {p.seconds:.1f} s" for p in phases)]
