"""Files point at content-addressed blobs.

Existing filesets get ``layout = 1`` (their files still lie at their paths); the server moves those
files into blobs (``blobs/<aa>/<sha256>``, by the sha256 their rows already hold) when it starts, and
sets ``layout = 2`` (see ``modelyard.filesets.blobs.adopt_legacy``): the database does not know where
``MODELYARD_HOME`` or the S3 credentials are, the server does.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("filesets", sa.Column("layout", sa.Integer(), nullable=False, server_default="1"))
    op.create_index("ix_fileset_files_sha256", "fileset_files", ["sha256"])
    op.create_table(  # filled by the server (it knows the storages): see filesets/blobs.py
        "blob_areas",
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("storage", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blob_areas")
    op.drop_index("ix_fileset_files_sha256", "fileset_files")
    op.drop_column("filesets", "layout")
