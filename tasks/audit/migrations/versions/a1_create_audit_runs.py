"""Create audit_runs: one row per letta-ops flow run.

Revision ID: a1_create_audit_runs
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1_create_audit_runs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("record_id", sa.String(80), primary_key=True),
        sa.Column("operation", sa.String(40), nullable=False),
        sa.Column("server", sa.String(80), nullable=False),
        sa.Column("flow_run_id", sa.String(40)),
        sa.Column("flow_run_name", sa.String(200)),
        sa.Column("flow_name", sa.String(200)),
        sa.Column("parent_flow_run_id", sa.String(40)),
        sa.Column("deployment_id", sa.String(40)),
        sa.Column("deployment_name", sa.String(200)),
        sa.Column("triggered_by", sa.String(200)),
        sa.Column("parameters", sa.JSON),
        sa.Column("versions_from", sa.String(40)),
        sa.Column("versions_to", sa.String(40)),
        sa.Column("backup_set", sa.String(200)),
        sa.Column("counts_before", sa.JSON),
        sa.Column("counts_after", sa.JSON),
        sa.Column("renames", sa.JSON),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("rollback_outcome", sa.String(200)),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("details", sa.JSON),
        sa.Column("object_key", sa.String(400)),
    )
    for column in ("operation", "server", "flow_run_id", "outcome", "started_at"):
        op.create_index(f"ix_audit_runs_{column}", "audit_runs", [column])


def downgrade() -> None:
    op.drop_table("audit_runs")
