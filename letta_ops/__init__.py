"""letta-ops: back up, upgrade, roll back and maintain self-hosted Letta servers.

The repository keeps the design's top-level folders (``flows/``, ``tasks/``, ``blocks/``,
``cli/``); installed, they are ``letta_ops.flows``, ``letta_ops.tasks``, ``letta_ops.blocks`` and
``letta_ops.cli`` (see ``pyproject.toml``), so a shared environment (a Prefect worker's, with
Prefect and its collections) never gets generic top-level packages named ``flows`` or ``tasks``.
"""
