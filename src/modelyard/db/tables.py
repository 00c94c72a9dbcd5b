"""Table definitions. The schema itself is created by Alembic migrations, never ``create_all``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelyard.db.engine import new_id

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = (Index("uq_workspaces_id", "id", unique=True),)

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str | None] = mapped_column(String(64), default=lambda: new_id("workspace"))
    """``workspace-<base58>``; nullable only in the schema (migration 0006 filled every older row)."""
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(255))
    updated_by: Mapped[str | None] = mapped_column(String(255))
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
    # pids of the engine processes last started for it (before replicas were rows; no longer written)
    processes: Mapped[list[int] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    placement: Mapped[str | None] = mapped_column(String(16))  # local | ray; None: the server's default
    urls: Mapped[list[str] | None] = mapped_column(JsonType)  # engine "remote": the servers to use
    resources: Mapped[dict[str, float] | None] = mapped_column(JsonType)  # what a replica needs from a node


class EndpointLease(Base):
    """Which server process owns an endpoint's replicas now: the one whose lease has not expired.
    ``epoch`` grows with every change of owner; ``last_request_at`` is written by the other processes
    whose gateways served it, so the owner's ``inactive_timeout`` sees their traffic too."""

    __tablename__ = "endpoint_leases"

    endpoint_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    last_request_at: Mapped[datetime | None] = mapped_column(DateTime)


class ServerProcess(Base):
    """A server process that is alive until ``seen_until`` (renewed with its leases): one that stops
    cleanly hands its replicas over instead of stopping them when another one is alive."""

    __tablename__ = "server_processes"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_until: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class EndpointReplica(Base):
    """One running replica, written by its owning process: every process's gateway routes to it by
    ``url``, and a new owner adopts it from ``record`` (the backend's description) instead of starting
    another. ``adapters`` maps each adapter loaded in it to the version loaded."""

    __tablename__ = "endpoint_replicas"
    __table_args__ = (Index("ix_endpoint_replicas_endpoint_id", "endpoint_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False
    )
    serial: Mapped[int] = mapped_column(Integer, nullable=False)
    backend: Mapped[str] = mapped_column(String(16), nullable=False)
    url: Mapped[str] = mapped_column(String(255), nullable=False)
    record: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    adapters: Mapped[dict[str, str]] = mapped_column(JsonType, nullable=False)
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
    project: Mapped[str | None] = mapped_column(String(255))
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


# --- identity and access (see modelyard.auth) -------------------------------------------------------


class AuthGeneration(Base):
    """One row (``id = 1``) whose ``value`` grows with every change to keys or role bindings, in the
    same transaction: a server process compares it with what it last loaded (one primary-key read per
    request) instead of querying keys and bindings each time."""

    __tablename__ = "auth_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class SigningKey(Base):
    """A key pair that signs access keys. ``private_key`` is PEM encrypted with the server's keyring;
    ``public_jwk`` is published at ``/apis/auth/jwks``."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), nullable=False)
    private_key: Mapped[str] = mapped_column(Text, nullable=False)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class AccessKey(Base):
    """An access key's metadata; the token itself is never stored (it is a JWT whose ``jti`` is this row)."""

    __tablename__ = "access_keys"
    __table_args__ = (Index("ix_access_keys_principal", "principal"),)

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    principal: Mapped[str] = mapped_column(String(255), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(16), nullable=False)
    default_workspace: Mapped[str | None] = mapped_column(String(63))
    scopes: Mapped[list[str] | None] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # ACTIVE | SUSPENDED | REVOKED
    issuer: Mapped[str] = mapped_column(String(255), nullable=False)
    audiences: Mapped[list[str]] = mapped_column(JsonType, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class RoleBinding(Base):
    """``principal`` (or ``*``: every authenticated principal) has ``role`` in ``workspace`` (``None``:
    platform-wide, for PlatformAdmin). Revoking sets ``revoked_at``; one active binding per triple."""

    __tablename__ = "role_bindings"
    __table_args__ = (
        Index("ix_role_bindings_workspace", "workspace"),
        Index("uq_role_bindings_active", "principal", "workspace", "role", unique=True,
              sqlite_where=text("revoked_at IS NULL"), postgresql_where=text("revoked_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(255), nullable=False)
    workspace: Mapped[str | None] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    granted_by: Mapped[str] = mapped_column(String(255), nullable=False)
    granted_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Secret(Base):
    """A workspace secret; ``ciphertext`` is the value encrypted with the server's keyring."""

    __tablename__ = "secrets"

    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="RESTRICT"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class AuditEvent(Base):
    """One change attempted through the API: who, what, on what, when, and how it ended."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"), Index("ix_audit_events_workspace", "workspace"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    principal: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)
    workspace: Mapped[str | None] = mapped_column(String(63))
    target: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # success | denied | failed
    request_id: Mapped[str | None] = mapped_column(String(64))


class ModelProvider(Base):
    """An upstream OpenAI-compatible server (``host_url``) that serves registry models; its API key is
    the workspace secret ``api_key_secret_name``, read only when the gateway calls it."""

    __tablename__ = "model_providers"
    __table_args__ = (
        UniqueConstraint("workspace", "name", name="uq_model_providers_workspace_name"),
        Index("ix_model_providers_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    project: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    host_url: Mapped[str] = mapped_column(String(2048), nullable=False)
    api_key_secret_name: Mapped[str | None] = mapped_column(String(255))
    served_models: Mapped[list[dict[str, str]] | None] = mapped_column(JsonType)
    enabled_models: Mapped[list[str] | None] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_message: Mapped[str] = mapped_column(Text, nullable=False)
    default_extra_body: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    default_extra_headers: Mapped[dict[str, str] | None] = mapped_column(JsonType)
    required_extra_body: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    required_extra_headers: Mapped[dict[str, str] | None] = mapped_column(JsonType)
    model_deployment_id: Mapped[str | None] = mapped_column(String(255))
    auth_header_format: Mapped[str | None] = mapped_column(String(1024))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class VirtualModel(Base):
    """A stable model name in a workspace that the gateway routes to one of its ``targets`` (by weight)
    or to ``default_model_entity``; ``db_version`` guards changes (optimistic locking)."""

    __tablename__ = "virtual_models"
    __table_args__ = (
        UniqueConstraint("workspace", "name", name="uq_virtual_models_workspace_name"),
        Index("ix_virtual_models_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(
        String(63), ForeignKey("workspaces.name", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    project: Mapped[str | None] = mapped_column(String(255))
    default_model_entity: Mapped[str | None] = mapped_column(String(255))
    autoprovisioned: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False)
    targets: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    request_middleware: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False)
    response_middleware: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False)
    post_response_middleware: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False)
    override_proxy: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(String(255))
    updated_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    db_version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": db_version}  # noqa: RUF012 (SQLAlchemy reads it as is)


USAGE_LATENCY_BUCKETS = 80
"""Latency histogram buckets of a usage row: ``lat_00`` counts answers of at most 1 ms, ``lat_NN`` those
in (2^((NN-1)/4), 2^(NN/4)] ms, and ``lat_79`` everything above 2^(78/4) ms (about 742 s). See
:mod:`modelyard.usage.histogram`."""
USAGE_LATENCY_COLUMNS = tuple(f"lat_{i:02d}" for i in range(USAGE_LATENCY_BUCKETS))

usage_minutes = Table(
    "usage_minutes",
    Base.metadata,
    # one row per (workspace, model, endpoint, minute) per writer: each recorder object owns its rows and
    # writes their absolute totals, so a retried flush never double-counts and processes never collide
    Column("workspace", String(63), primary_key=True),
    Column("model", String(255), primary_key=True),
    # '' when no endpoint of ours served the request (a provider, or refused before routing)
    Column("endpoint_id", String(64), primary_key=True),
    # Unix time in minutes (UTC), floor(epoch_seconds / 60): hours and days are integer multiples of it
    Column("minute", BigInteger, primary_key=True),
    Column("writer", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    # NULL rather than 0 for an empty bucket: most are empty, and NULLs cost no space
    *(Column(name, BigInteger) for name in USAGE_LATENCY_COLUMNS),
    Index("ix_usage_minutes_workspace_minute", "workspace", "minute"),
)
"""Usage records: requests, errors, tokens and a latency histogram per served model per minute."""
