"""The PostgreSQL database a Letta server keeps its state in, saved as a Prefect block.

Why a block of its own: everything that must survive an upgrade lives here, and the URI forms
are a known trap. The fields, URI rules and connection settings are
:class:`letta_ops.tasks.postgres.database.PostgresDatabase` (what the drivers take); this adds
only what Prefect needs to save, list and document it.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import ConfigDict

from ..tasks.postgres.database import PostgresDatabase
from ..tasks.postgres.restore_target import (
    RestoreTargetRefused,
    database_from_uri,
    is_uri,
    require_reference,
)
from .block_docs import LOGO_URL, readme_section


class LettaDatabase(Block, PostgresDatabase):
    """Connection to a Letta server's PostgreSQL database, and the pg client tools to use."""

    # Validation errors must never echo a URI or password back to a log.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Letta Database"
    _logo_url = LOGO_URL
    _documentation_url = readme_section("Prefect blocks: saving a server step by step")
    _description = "The PostgreSQL + pgvector database of a Letta server."


def target_database(reference: str, environ: Mapping[str, str] | None = None) -> LettaDatabase:
    """``postgresql://USER@HOST:PORT/DB`` (password from PGPASSWORD) or a saved block's name."""
    text = require_reference(reference)
    if is_uri(text):
        return database_from_uri(text, environ, model=LettaDatabase)
    try:
        return LettaDatabase.load(text)
    except ValueError as exc:
        raise RestoreTargetRefused(
            f"No saved Letta Database block named {text!r}; save one, or pass "
            "postgresql://USER@HOST:PORT/DATABASE with the password in PGPASSWORD."
        ) from exc
