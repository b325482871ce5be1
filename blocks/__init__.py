"""letta-ops' Prefect blocks, registered with ``prefect block register -m letta_ops.blocks``.

Why lazy: Prefect's ``block register -m`` registers the block classes it finds among a
module's members, so the package names them all here; but every letta-ops module that imports
one block module (the command line, the read-only commands) would otherwise load all of them
and Prefect with it. Each class is imported when first asked for (PEP 562), and ``dir()``
lists them, which is how ``inspect.getmembers`` (and so ``block register``) finds them.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Block class -> the module defining it.
BLOCK_MODULES = {
    "LettaServer": "letta_server",
    "LettaDatabase": "letta_database",
    "S3BackupStore": "backup_store",
    "LocalBackupStore": "backup_store",
    "LettaProcessRuntime": "process_runtime",
    "DockerComposeRuntime": "compose_runtime",
    "LettaCommandRuntime": "command_runtime",
    "LettaManualRuntime": "manual_runtime",
}

__all__ = sorted(BLOCK_MODULES)


def __getattr__(name: str) -> Any:
    if name in BLOCK_MODULES:
        module = importlib.import_module(f"{__name__}.{BLOCK_MODULES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(BLOCK_MODULES))
