"""Identity and access: access keys, signing keys, role bindings, secrets, the audit trail.

The built-in workspaces get the reference's wildcard bindings: ``default`` ``*`` → Editor and ``system``
``*`` → Viewer. Other workspaces of a registry created before auth existed belong to nobody but the
PlatformAdmin until it adds members (secure by default; ``modelyard members add`` shares them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("created_by", sa.String(255)))
    op.add_column("workspaces", sa.Column("updated_by", sa.String(255)))
    generation = op.create_table(
        "auth_generation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(generation, [{"id": 1, "value": 1}])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_jwk", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "access_keys",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128)),
        sa.Column("description", sa.Text()),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("default_workspace", sa.String(63)),
        sa.Column("scopes", JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issuer", sa.String(255), nullable=False),
        sa.Column("audiences", JSON, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime()),
        sa.Column("revoked_at", sa.DateTime()),
    )
    op.create_index("ix_access_keys_principal", "access_keys", ["principal"])
    bindings = op.create_table(
        "role_bindings",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("workspace", sa.String(63)),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("granted_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime()),
    )
    op.create_index("ix_role_bindings_workspace", "role_bindings", ["workspace"])
    op.create_index("uq_role_bindings_active", "role_bindings", ["principal", "workspace", "role"], unique=True,
                    sqlite_where=sa.text("revoked_at IS NULL"), postgresql_where=sa.text("revoked_at IS NULL"))
    op.create_table(
        "secrets",
        sa.Column("workspace", sa.String(63), sa.ForeignKey("workspaces.name", ondelete="RESTRICT"), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("description", sa.Text()),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("workspace", sa.String(63)),
        sa.Column("target", sa.String(1024)),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64)),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_workspace", "audit_events", ["workspace"])
    now = datetime.now(UTC).replace(tzinfo=None)
    op.bulk_insert(bindings, [
        {"id": f"rb-{uuid.uuid4().hex}", "principal": "*", "workspace": name,
         "role": "Viewer" if name == "system" else "Editor", "granted_by": "system", "granted_at": now,
         "revoked_at": None}
        for name in ("default", "system")
    ])


def downgrade() -> None:
    for table in ("audit_events", "secrets", "role_bindings", "access_keys", "signing_keys", "auth_generation"):
        op.drop_table(table)
    op.drop_column("workspaces", "updated_by")
    op.drop_column("workspaces", "created_by")
