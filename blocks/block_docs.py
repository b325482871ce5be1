"""Where each block's logo and documentation live (Prefect shows both in its UI).

Why one module: the blocks' documentation is this project's README, so the links are built
from one address and a heading, and ``tests/test_block_standards.py`` proves every heading
exists; when the repository moves, ``README_URL`` is the one line to change.
"""

from __future__ import annotations

import re

#: The README as published beside the source.
README_URL = "https://github.com/letta-ops/letta-ops/blob/main/README.md"
#: Letta's own mark (GitHub serves an organisation's avatar at this address): the blocks
#: configure Letta servers, and Prefect's block catalogue groups them under it.
LOGO_URL = "https://github.com/letta-ai.png"


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def readme_section(heading: str) -> str:
    """The URL of the README section titled ``heading``."""
    return f"{README_URL}#{heading_anchor(heading)}"
