"""Progress of long work (exports, uploads), reported to whoever is watching.

Why a hook rather than printing: the same tasks run under a worker (where Prefect's logs are
the record) and under the command line (where an operator wants a progress bar on stderr).
The command line installs a reporter; by default progress is silent.
"""

from __future__ import annotations

from typing import Protocol


class ProgressReporter(Protocol):
    def start(self, label: str, total: int | None, unit: str) -> None: ...
    def advance(self, label: str, amount: int = 1) -> None: ...
    def finish(self, label: str) -> None: ...


class _Silent:
    def start(self, label: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, label: str, amount: int = 1) -> None:
        pass

    def finish(self, label: str) -> None:
        pass


_reporter: ProgressReporter = _Silent()


def reporter() -> ProgressReporter:
    return _reporter


def install(new: ProgressReporter | None) -> None:
    global _reporter
    _reporter = new or _Silent()
