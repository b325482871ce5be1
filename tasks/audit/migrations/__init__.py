"""Alembic migrations of the audit store (:mod:`letta_ops.tasks.audit.store`).

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
    """Apply every migration the database lacks.

    At head this is one query and alembic is not even imported (it costs more than half a
    second, which ``letta-ops history`` would otherwise pay on every call).
    """
    head = _script_head()
    if head is not None and _stored_revisions(engine) == {head}:
        return
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_config(connection), "head")


def _script_head() -> str | None:
    """The single head of the migration scripts, read from their text (None: not exactly one,
    let alembic decide)."""
    import ast
    import re

    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(SCRIPT_LOCATION) / "versions").glob("*.py"):
        text = path.read_text()
        revision = re.search(r"^revision\s*=\s*(.+)$", text, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.MULTILINE)
        if revision is None or down is None:
            continue
        try:
            revisions.add(ast.literal_eval(revision.group(1).split("#")[0].strip()))
            down_value = ast.literal_eval(down.group(1).split("#")[0].strip())
        except (ValueError, SyntaxError):
            return None
        if isinstance(down_value, str):
            parents.add(down_value)
        elif isinstance(down_value, tuple | list):
            parents.update(down_value)
    heads = revisions - parents
    return next(iter(heads)) if len(heads) == 1 else None


def _stored_revisions(engine: Engine) -> set[str]:
    """The revisions the database records (empty when it has no version table yet)."""
    from sqlalchemy import text

    try:
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            return {row[0] for row in rows}
    except Exception:  # noqa: BLE001 - no table yet, or unreadable: alembic will tell
        return set()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(SCRIPT_LOCATION).get_current_head() or ""
