"""Alembic environment: runs on the connection :func:`upgrade_to_head` passes in."""

from __future__ import annotations

from alembic import context

from letta_ops.tasks.audit.migrations import VERSION_TABLE  # alembic loads this file by path

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
