"""The ``letta-ops`` commands for rollback, restore and restore-agents."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this area's sub-commands on the ``letta-ops`` parser."""
