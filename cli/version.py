"""``letta-ops --version``: letta-ops' version and the Prefect it runs on.

Why both: flows, blocks and ``prefect.yaml`` are written against the pinned Prefect (see
``pyproject.toml``); an operator reporting a problem, or a worker image checked in CI, must say
which pair it runs. Read from the installed distributions' metadata, so it costs no Prefect
import and answers from a wheel as from a checkout.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def installed_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    return f"letta-ops {installed_version('letta-ops')} (Prefect {installed_version('prefect')})"


class VersionAction(argparse.Action):
    """Print :func:`version_text` and exit 0; the metadata is read only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print letta-ops' version and Prefect's, then exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit(0)
