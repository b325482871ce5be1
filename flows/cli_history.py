"""The ``letta-ops`` commands for history and history show."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this area's sub-commands on the ``letta-ops`` parser."""
