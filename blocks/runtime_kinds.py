"""Every way of running a Letta server letta-ops drives, in one table.

Why a table: the environment (``LETTA_OPS_RUNTIME``), saved blocks, the README and doctor all
need the same list; before, adding a kind touched three places in the server profile. Adding a
kind now is one block module (a :class:`letta_ops.blocks.letta_runtime.LettaRuntime` with
``from_env(server_name)``) and one line below. The blocks load lazily, so importing this table
loads no Prefect (the read-only commands read it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .letta_runtime import LettaRuntime


@dataclass(frozen=True)
class RuntimeKind:
    """One ``LETTA_OPS_RUNTIME`` value: its block, the driver it runs, what doctor checks."""

    name: str
    #: ``.module:Class`` of the block, relative to ``letta_ops.blocks``.
    block: str
    #: The module under ``letta_ops.tasks`` the block drives (None: operator commands, by hand).
    driver: str | None
    #: ``letta-ops doctor`` checks that look at this kind (``letta_ops.tasks.doctor.check_names``).
    doctor_checks: tuple[str, ...]
    #: Environment variables this kind cannot do without, each with what it names.
    required_env: tuple[tuple[str, str], ...] = ()

    def block_type(self) -> type[LettaRuntime]:
        return load_block(self.block)


def load_block(spec: str) -> type:
    """The block class ``.module:Class`` names (relative to ``letta_ops.blocks``), imported
    only now: the tables stay free of Prefect until a block is wanted."""
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module, __package__), cls)


RUNTIME_KINDS: dict[str, RuntimeKind] = {
    kind.name: kind
    for kind in (
        RuntimeKind(
            "process",
            ".process_runtime:LettaProcessRuntime",
            "letta_ops.tasks.runtimes.process",
            ("runtime", "home-writable"),
        ),
        RuntimeKind(
            "compose",
            ".compose_runtime:DockerComposeRuntime",
            "letta_ops.tasks.runtimes.compose",
            ("runtime", "compose-pin"),
            (("LETTA_OPS_COMPOSE_FILE", "the compose file that defines the Letta server service"),),
        ),
        RuntimeKind("command", ".command_runtime:LettaCommandRuntime", None, ("runtime",)),
        RuntimeKind("manual", ".manual_runtime:LettaManualRuntime", None, ("runtime",)),
    )
}
