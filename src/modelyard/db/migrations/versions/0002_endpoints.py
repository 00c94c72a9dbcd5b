"""Endpoints and the adapters attached to them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column(
            "workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("model", sa.String(127), nullable=False),
        sa.Column("hardware", sa.String(127), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("inactive_timeout", sa.Integer()),
        sa.Column("enable_lora", sa.Boolean(), nullable=False),
        sa.Column("max_loras", sa.Integer(), nullable=False),
        sa.Column("max_lora_rank", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("processes", JSON),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_endpoints_workspace", "endpoints", ["workspace"])
    op.create_table(
        "endpoint_adapters",
        sa.Column(
            "adapter_id", sa.String(64), sa.ForeignKey("adapters.id", ondelete="RESTRICT"), primary_key=True
        ),
        sa.Column(
            "endpoint_id", sa.String(64), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("workspace", sa.String(63), nullable=False),
        sa.Column("adapter_name", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_endpoint_adapters_endpoint_id", "endpoint_adapters", ["endpoint_id"])


def downgrade() -> None:
    op.drop_table("endpoint_adapters")
    op.drop_table("endpoints")
