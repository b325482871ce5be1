"""Create journal_entries: the start and end of every destructive step of a run.

Revision ID: a2_create_journal_entries
Revises: a1_create_audit_runs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a2_create_journal_entries"
down_revision = "a1_create_audit_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal_entries",
        sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(80), nullable=False),
        sa.Column("server", sa.String(80), nullable=False),
        sa.Column("operation", sa.String(40), nullable=False),
        sa.Column("step", sa.String(200), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("details", sa.JSON),
    )
    op.create_index("ix_journal_entries_run_id", "journal_entries", ["run_id"])
    op.create_index("ix_journal_entries_server", "journal_entries", ["server"])


def downgrade() -> None:
    op.drop_table("journal_entries")
