"""Registry: workspaces, models, adapters.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    workspaces = op.create_table(
        "workspaces",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("description", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("description", sa.Text()),
        sa.Column("finetuning_type", sa.String(32)),
        sa.Column("fileset", sa.String(255)),
        sa.Column("base_model", sa.String(255)),
        sa.Column("trust_remote_code", sa.Boolean(), nullable=False),
        sa.Column("backend_format", sa.String(32)),
        sa.Column("spec", JSON),
        sa.Column("api_endpoint", JSON),
        sa.Column("prompt", JSON),
        sa.Column("custom_fields", JSON),
        sa.Column("ownership", JSON),
        sa.Column("model_providers", JSON),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("workspace", "name", name="uq_models_workspace_name"),
    )
    op.create_index("ix_models_created_at", "models", ["created_at"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(127), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("fileset", sa.String(255), nullable=False),
        sa.Column("finetuning_type", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("lora_config", JSON),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("workspace", "name", name="uq_adapters_workspace_name"),
    )
    op.create_index("ix_adapters_model_id", "adapters", ["model_id"])

    now = datetime.now(UTC).replace(tzinfo=None)
    op.bulk_insert(
        workspaces,
        [
            {"name": "default", "description": "The default workspace", "created_at": now, "updated_at": now},
            {"name": "system", "description": "Platform-owned resources", "created_at": now, "updated_at": now},
        ],
    )


def downgrade() -> None:
    op.drop_table("adapters")
    op.drop_table("models")
    op.drop_table("workspaces")
