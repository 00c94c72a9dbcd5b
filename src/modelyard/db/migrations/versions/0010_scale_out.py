"""Scale-out: endpoint placement, remote URLs and resources; leases; replicas as rows; live server processes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("placement", sa.String(16)))
        batch.add_column(sa.Column("urls", JSON))
        batch.add_column(sa.Column("resources", JSON))
    op.create_table(
        "endpoint_leases",
        sa.Column("endpoint_id", sa.String(64), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("last_request_at", sa.DateTime()),
    )
    op.create_table(
        "endpoint_replicas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("endpoint_id", sa.String(64), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("serial", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("adapters", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_endpoint_replicas_endpoint_id", "endpoint_replicas", ["endpoint_id"])
    op.create_table(
        "server_processes",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("seen_until", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_processes")
    op.drop_index("ix_endpoint_replicas_endpoint_id", table_name="endpoint_replicas")
    op.drop_table("endpoint_replicas")
    op.drop_table("endpoint_leases")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("resources")
        batch.drop_column("urls")
        batch.drop_column("placement")
