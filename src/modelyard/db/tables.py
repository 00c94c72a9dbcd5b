"""Table definitions. The schema itself is created by Alembic migrations, never ``create_all``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
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


class Endpoint(Base):
    """A deployment of one base model. ``desired_state`` is what the user asked for; ``state`` is
    what the supervisor last observed (the Together wire field)."""

    __tablename__ = "endpoints"
    __table_args__ = (Index("ix_endpoints_workspace", "workspace"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(255), nullable=False)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
    )
    model_id: Mapped[str] = mapped_column(String(64), ForeignKey("models.id", ondelete="RESTRICT"), nullable=False)
    model: Mapped[str] = mapped_column(String(127), nullable=False)  # ``ws/name`` of the base model
    hardware: Mapped[str] = mapped_column(String(127), nullable=False)
    min_replicas: Mapped[int] = mapped_column(Integer, nullable=False)
    max_replicas: Mapped[int] = mapped_column(Integer, nullable=False)
    desired_state: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    inactive_timeout: Mapped[int | None] = mapped_column(Integer)
    enable_lora: Mapped[bool] = mapped_column(Boolean, nullable=False)
    max_loras: Mapped[int] = mapped_column(Integer, nullable=False)
    max_lora_rank: Mapped[int] = mapped_column(Integer, nullable=False)
    engine: Mapped[str] = mapped_column(String(16), nullable=False)
    visibility: Mapped[str] = mapped_column(String(16), nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    # pids of the engine processes last started for it, so a restarted server can stop orphans
    processes: Mapped[list[int] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class EndpointAdapter(Base):
    """An adapter attached to an endpoint. The primary key makes an adapter attachable to one endpoint."""

    __tablename__ = "endpoint_adapters"
    __table_args__ = (Index("ix_endpoint_adapters_endpoint_id", "endpoint_id"),)

    adapter_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("adapters.id", ondelete="RESTRICT"), primary_key=True
    )
    endpoint_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False
    )
    workspace: Mapped[str] = mapped_column(String(63), nullable=False)  # the adapter's workspace
    adapter_name: Mapped[str] = mapped_column(String(63), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Fileset(Base):
    """A named set of files in a workspace; ``storage`` says where they live (never credentials)."""

    __tablename__ = "filesets"
    __table_args__ = (
        UniqueConstraint("workspace", "name", name="uq_filesets_workspace_name"),
        Index("ix_filesets_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    storage_type: Mapped[str] = mapped_column(String(16), nullable=False)
    storage: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)
    custom_fields: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # 2: files are rows pointing at content-addressed blobs; 1: files still in the old per-path tree
    # (moved into blobs when the server starts, see filesets/blobs.py)
    layout: Mapped[int] = mapped_column(Integer, nullable=False, default=2)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class FilesetFile(Base):
    """One file: a path pointing at the blob ``sha256`` of its fileset's storage. Written after the blob
    is complete, so a row and its bytes never disagree."""

    __tablename__ = "fileset_files"
    __table_args__ = (Index("ix_fileset_files_sha256", "sha256"),)

    fileset_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("filesets.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class BlobArea(Base):
    """A place blobs were stored (local disk, an S3 bucket/prefix), remembered so the sweeper still
    visits it after the last fileset using it is deleted. ``storage`` has no credentials."""

    __tablename__ = "blob_areas"

    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    storage: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
