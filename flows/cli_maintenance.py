"""The ``letta-ops`` commands for sync-tools, cleanup-sources, repair-sequences and doctor."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this area's sub-commands on the ``letta-ops`` parser."""
