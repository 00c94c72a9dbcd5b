"""Workspaces get an ``id`` (``workspace-<base58>``), as the reference's do; existing rows, the built-in
``default`` and ``system`` included, get one here. Filesets get a ``project`` (the reference's field).

The column stays nullable in the schema (tightening it would rebuild the table on SQLite, which every
other table references); a unique index guards it and the application always sets it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from modelyard.db.engine import new_id

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("id", sa.String(64)))
    workspaces = sa.table("workspaces", sa.column("name", sa.String), sa.column("id", sa.String))
    bind = op.get_bind()
    for (name,) in bind.execute(sa.select(workspaces.c.name)).all():
        bind.execute(workspaces.update().where(workspaces.c.name == name).values(id=new_id("workspace")))
    op.create_index("uq_workspaces_id", "workspaces", ["id"], unique=True)
    op.add_column("filesets", sa.Column("project", sa.String(255)))


def downgrade() -> None:
    op.drop_column("filesets", "project")
    op.drop_index("uq_workspaces_id", table_name="workspaces")
    op.drop_column("workspaces", "id")
