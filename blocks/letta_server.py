"""Where a Letta server answers, and the password that opens it, saved as a Prefect block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import ConfigDict

from ..tasks.letta.endpoint import LettaEndpoint
from .block_docs import LOGO_URL, readme_section


class LettaServer(Block, LettaEndpoint):
    """A running Letta server's REST endpoint.

    The password is only sent when the server runs with ``--secure``; ``/v1/health/`` never
    needs it.
    """

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Letta Server"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Prefect blocks: saving a server step by step")
    _description = "The REST endpoint of a self-hosted Letta server and its optional password."
