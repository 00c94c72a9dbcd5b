"""Usage records: requests, errors, tokens and a latency histogram per served model per minute.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LATENCY_BUCKETS = 80  # frozen here: modelyard.db.tables.USAGE_LATENCY_BUCKETS at this revision


def upgrade() -> None:
    op.create_table(
        "usage_minutes",
        sa.Column("workspace", sa.String(63), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("writer", sa.String(64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        *(sa.Column(f"lat_{i:02d}", sa.BigInteger()) for i in range(LATENCY_BUCKETS)),
        sa.PrimaryKeyConstraint("workspace", "model", "endpoint_id", "minute", "writer", name="pk_usage_minutes"),
    )
    op.create_index("ix_usage_minutes_workspace_minute", "usage_minutes", ["workspace", "minute"])


def downgrade() -> None:
    op.drop_index("ix_usage_minutes_workspace_minute", table_name="usage_minutes")
    op.drop_table("usage_minutes")
