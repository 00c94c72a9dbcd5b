"""Table definitions. The schema itself is created by Alembic migrations, never ``create_all``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("workspace", "name", name="uq_models_workspace_name"),
        Index("ix_models_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    project: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    finetuning_type: Mapped[str | None] = mapped_column(String(32))
    fileset: Mapped[str | None] = mapped_column(String(255))
    base_model: Mapped[str | None] = mapped_column(String(255))
    trust_remote_code: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    backend_format: Mapped[str | None] = mapped_column(String(32))
    spec: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    api_endpoint: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    prompt: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    custom_fields: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    ownership: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    model_providers: Mapped[list[str] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("workspace", "name", name="uq_adapters_workspace_name"),
        Index("ix_adapters_model_id", "model_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    model_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("models.id", ondelete="CASCADE"), nullable=False
    )
    # ``ws/name`` of the base model, denormalised so lists can filter and sort on it;
    # model names cannot change, so it never goes stale.
    model: Mapped[str] = mapped_column(String(127), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    fileset: Mapped[str] = mapped_column(String(255), nullable=False)
    finetuning_type: Mapped[str] = mapped_column(String(32), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    lora_config: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
