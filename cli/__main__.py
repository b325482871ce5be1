"""``python -m letta_ops.cli``: the same as the ``letta-ops`` command."""

import sys

from .main import main

sys.exit(main())
