"""Filesets and their files.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "filesets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("storage_type", sa.String(16), nullable=False),
        sa.Column("storage", JSON, nullable=False),
        sa.Column("metadata", JSON),
        sa.Column("custom_fields", JSON),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("workspace", "name", name="uq_filesets_workspace_name"),
    )
    op.create_index("ix_filesets_created_at", "filesets", ["created_at"])
    op.create_table(
        "fileset_files",
        sa.Column("fileset_id", sa.String(64), sa.ForeignKey("filesets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fileset_files")
    op.drop_table("filesets")
