"""Model providers: upstream OpenAI-compatible servers the gateway calls for registry models.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "model_providers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("description", sa.Text()),
        sa.Column("host_url", sa.String(2048), nullable=False),
        sa.Column("api_key_secret_name", sa.String(255)),
        sa.Column("served_models", JSON),
        sa.Column("enabled_models", JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("default_extra_body", JSON),
        sa.Column("default_extra_headers", JSON),
        sa.Column("required_extra_body", JSON),
        sa.Column("required_extra_headers", JSON),
        sa.Column("model_deployment_id", sa.String(255)),
        sa.Column("auth_header_format", sa.String(1024)),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("workspace", "name", name="uq_model_providers_workspace_name"),
    )
    op.create_index("ix_model_providers_created_at", "model_providers", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_model_providers_created_at", table_name="model_providers")
    op.drop_table("model_providers")
