"""Virtual model wire models (the reference's ``VirtualModel`` shapes, plus our ``targets``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from modelyard.models.schemas import BackendFormat
from modelyard.workspaces.schemas import EntityName, RequestModel, WireModel

Project = Annotated[str, Field(max_length=255, pattern=r"^[\w\-./]+$")]
ModelName = Annotated[str, Field(min_length=1, max_length=255)]


class VirtualModelInferenceConfig(RequestModel):
    """A model the virtual model refers to (the reference's field; stored and returned)."""

    model: ModelName
    backend_format: BackendFormat | None = None


class WeightedTarget(RequestModel):
    """One target of a virtual model and its share of the traffic (our extension)."""

    model: Annotated[ModelName, Field(description=(
        "What the gateway can already call by name in the workspace: a model ('name' or 'ws/name'), an "
        "adapter, an endpoint or 'endpoint:adapter'; never another virtual model"))]
    weight: Annotated[int | float, Field(description="A positive integer; the target's share is weight / sum of "
                                                     "weights")] = 1


class MiddlewareCall(RequestModel):
    name: str
    config_type: str
    config: dict[str, Any] | None = None
    config_id: str | None = None


Middleware = Annotated[list[MiddlewareCall], Field(description=(
    "The reference's middleware pipeline; this server runs no middleware plugins, so only [] is accepted"))]
Targets = Annotated[list[WeightedTarget], Field(description=(
    "Weighted targets (our extension): each request picks one at random by weight, so traffic can move "
    "between versions while clients keep the virtual model's name. When left out, requests go to "
    "default_model_entity"))]


class _VirtualModelFields(RequestModel):
    default_model_entity: ModelName | None = None
    autoprovisioned: bool = False
    models: list[VirtualModelInferenceConfig] | None = None
    targets: Targets | None = None
    request_middleware: Middleware | None = None
    response_middleware: Middleware | None = None
    post_response_middleware: Middleware | None = None
    override_proxy: Annotated[str, Field(max_length=255)] | None = None


class CreateVirtualModelRequest(_VirtualModelFields):
    name: EntityName
    project: Project | None = None


class UpdateVirtualModelRequest(_VirtualModelFields):
    """PATCH: only the fields sent change; ``null`` clears ``default_model_entity``, ``targets`` or
    ``override_proxy``."""


class VirtualModel(WireModel):
    name: str
    workspace: str
    project: str | None = None
    default_model_entity: str | None = None
    autoprovisioned: bool = False
    models: list[dict[str, Any]] = Field(default_factory=list)
    targets: list[dict[str, Any]] | None = None
    request_middleware: list[dict[str, Any]] = Field(default_factory=list)
    response_middleware: list[dict[str, Any]] = Field(default_factory=list)
    post_response_middleware: list[dict[str, Any]] = Field(default_factory=list)
    override_proxy: str | None = None
    guardrail_config_ids: list[str] = Field(default_factory=list)
    id: str
    created_at: datetime
    created_by: str | None = None
    updated_at: datetime
    updated_by: str | None = None
    entity_id: str
    parent: str | None = None
    db_version: int
