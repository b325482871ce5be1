"""Alembic migrations of the audit store (:mod:`tasks.audit_store`).

Why alembic and a package: the audit store outlives letta-ops releases (a team's PostgreSQL
history is years old), so its schema only ever changes through numbered migrations, and the
scripts ship inside the wheel as ordinary modules. Migrations run programmatically on first
use; there is no ``alembic.ini``. A new migration is a new module in ``versions/`` whose
``down_revision`` is the previous head.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

SCRIPT_LOCATION = str(Path(__file__).parent)
#: Its own version table, so a shared PostgreSQL database never confuses it with another app's.
VERSION_TABLE = "letta_ops_audit_version"


def _config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Apply every migration the database lacks."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_config(connection), "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(SCRIPT_LOCATION).get_current_head() or ""
