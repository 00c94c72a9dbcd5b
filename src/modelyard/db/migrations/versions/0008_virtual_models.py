"""Virtual models: stable names the gateway routes to a model, an adapter or an endpoint (by weight).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "virtual_models",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("default_model_entity", sa.String(255)),
        sa.Column("autoprovisioned", sa.Boolean(), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("targets", JSON),
        sa.Column("request_middleware", JSON, nullable=False),
        sa.Column("response_middleware", JSON, nullable=False),
        sa.Column("post_response_middleware", JSON, nullable=False),
        sa.Column("override_proxy", sa.String(255)),
        sa.Column("created_by", sa.String(255)),
        sa.Column("updated_by", sa.String(255)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("db_version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("workspace", "name", name="uq_virtual_models_workspace_name"),
    )
    op.create_index("ix_virtual_models_created_at", "virtual_models", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_virtual_models_created_at", table_name="virtual_models")
    op.drop_table("virtual_models")
