"""``python -m letta_ops.cli``: the same as the ``letta-ops`` command."""

from .main import run

run()
