"""``python -m cli``: the same as the ``letta-ops`` command."""

import sys

from letta_ops.cli.main import main

sys.exit(main())
