"""letta-ops' blocks by Prefect's book: its block standard test suite, links into this README,
and ``prefect block register -m letta_ops.blocks`` against a real Prefect server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import letta_ops.blocks
from letta_ops.blocks.block_docs import LOGO_URL, README_URL, heading_anchor

REPO = Path(__file__).resolve().parents[1]
BLOCKS = [getattr(letta_ops.blocks, name) for name in letta_ops.blocks.__all__]


def markdown_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown document's headings: lines in fenced code are not
    headings (a shell comment ``# Backups`` links nowhere), and a repeated heading's anchor
    gets ``-1``, ``-2``... as on GitHub."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
            continue
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        anchor = base = heading_anchor(line.lstrip("#"))
        n = 1
        while anchor in anchors:
            anchor, n = f"{base}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def readme_anchors() -> set[str]:
    return markdown_anchors((REPO / "README.md").read_text())


@pytest.mark.parametrize("block_class", BLOCKS, ids=lambda c: c.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's own checks (description, documentation URL, every field described ending in
    a period, a code example that loads the block; the logo download is skipped offline)."""

    @pytest.fixture
    def block(self, block_class):
        return block_class


@pytest.mark.parametrize("block_class", BLOCKS, ids=lambda c: c.__name__)
def test_block_links_into_this_readme(block_class) -> None:
    assert block_class._logo_url and str(block_class._logo_url) == LOGO_URL
    url = str(block_class._documentation_url)
    assert url.startswith(README_URL + "#"), url
    assert url.partition("#")[2] in readme_anchors(), f"no README heading for {url}"
    assert "prefect-aws" not in url


def test_anchors_skip_code_and_number_repeats() -> None:
    text = "# Backups\n\n```sh\n# Restore by hand\n```\n## Backups\n### Time limits\n"
    assert markdown_anchors(text) == {"backups", "backups-1", "time-limits"}


def test_heading_anchor_is_githubs() -> None:
    assert heading_anchor("Runtimes: what stops and starts the server") == (
        "runtimes-what-stops-and-starts-the-server"
    )
    assert heading_anchor(" Prefect blocks: saving a server step by step") == (
        "prefect-blocks-saving-a-server-step-by-step"
    )


def test_importing_the_package_loads_no_block_until_asked() -> None:
    """The command line imports letta_ops.blocks.* without Prefect where it can."""
    code = "import sys, letta_ops.blocks; print('prefect' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@pytest.mark.e2e
def test_prefect_block_register_registers_every_block(prefect_harness) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    registered = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "block", "register"]
        + ["-m", "letta_ops.blocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert f"Successfully registered {len(BLOCKS)} blocks" in registered.stdout
    with get_client(sync_client=True) as client:
        for block_class in BLOCKS:
            slug = block_class.get_block_type_slug()
            block_type = client.read_block_type_by_slug(slug)
            assert block_type.name == block_class.get_block_type_name()
            assert str(block_type.documentation_url) == str(block_class._documentation_url)
            assert str(block_type.logo_url) == LOGO_URL
            assert block_type.description
