"""Model name → endpoint and the name the engine knows it by.

A request's ``model`` may be ``adapter_name``, ``endpoint_name:adapter_name`` or ``endpoint_name``
(the base model); under the inference-gateway prefix also ``ws/adapter_name``. Adapters are
loaded into engines under their own name and the base model under the endpoint's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.auth.principal import Access
from modelyard.db import tables
from modelyard.errors import ApiError


@dataclass(frozen=True)
class Target:
    endpoint_id: str
    endpoint_name: str
    state: str
    engine_model: str
    scales_to_zero: bool = False
    workspace: str = ""
    """The endpoint's workspace (a public endpoint may be called from others' by those who can read it)."""
    prompt: dict[str, Any] | None = None
    """The registry model's ``prompt`` (the base model's for an endpoint, the adapter's model's for an
    adapter), applied by the gateway to each request."""


def not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist.", code="model_not_found")


def _visible(endpoint: tables.Endpoint | None, workspace: str) -> bool:
    return endpoint is not None and (endpoint.workspace == workspace or endpoint.visibility == "public")


def _bound(session: Session, workspace: str, adapter_name: str, endpoint: tables.Endpoint | None = None) -> Target | None:
    stmt = (
        select(tables.EndpointAdapter, tables.Endpoint, tables.Model.prompt)
        .join(tables.Endpoint, tables.Endpoint.id == tables.EndpointAdapter.endpoint_id)
        .join(tables.Adapter, tables.Adapter.id == tables.EndpointAdapter.adapter_id)
        .join(tables.Model, tables.Model.id == tables.Adapter.model_id)
        .where(tables.EndpointAdapter.workspace == workspace, tables.EndpointAdapter.adapter_name == adapter_name,
               tables.Adapter.enabled.is_(True))
    )
    if endpoint is not None:
        stmt = stmt.where(tables.EndpointAdapter.endpoint_id == endpoint.id)
    row = session.execute(stmt).first()
    if row is None:
        return None
    _, bound_to, prompt = row
    return Target(bound_to.id, bound_to.name, bound_to.state, adapter_name, bound_to.min_replicas == 0,
                  bound_to.workspace, prompt or None)


def resolve(session: Session, workspace: str, model: str) -> Target:
    if ":" in model:
        endpoint_name, _, adapter_name = model.partition(":")
        endpoint = session.scalar(select(tables.Endpoint).where(tables.Endpoint.name == endpoint_name))
        if not _visible(endpoint, workspace) or not adapter_name or ":" in adapter_name:
            raise not_found(model)
        target = _bound(session, endpoint.workspace, adapter_name, endpoint)
        if target is None:
            raise not_found(model)
        return target
    endpoint = session.scalar(select(tables.Endpoint).where(tables.Endpoint.name == model))
    if _visible(endpoint, workspace):
        prompt = session.scalar(select(tables.Model.prompt).where(tables.Model.id == endpoint.model_id))
        return Target(endpoint.id, endpoint.name, endpoint.state, endpoint.name, endpoint.min_replicas == 0,
                      endpoint.workspace, prompt or None)
    target = _bound(session, workspace, model)
    if target is None and model.count("/") == 1:
        adapter_ws, _, adapter_name = model.partition("/")
        if adapter_ws == workspace:
            target = _bound(session, adapter_ws, adapter_name)
    if target is None:
        raise not_found(model)
    return target


def callable_models(session: Session, workspace: str, access: Access) -> list[tuple[str, str | None, str]]:
    """``(id, parent, owner)`` for everything a caller in ``workspace`` can send requests to (public
    endpoints of other workspaces only where the caller can read)."""
    if session.get(tables.Workspace, workspace) is None:  # as the registry answers for it
        raise ApiError(404, f"Workspace '{workspace}' not found", code="workspace_not_found")
    endpoints = session.scalars(
        select(tables.Endpoint).where(
            (tables.Endpoint.workspace == workspace) | (tables.Endpoint.visibility == "public")
        ).order_by(tables.Endpoint.created_at)
    ).all()
    out: list[tuple[str, str | None, str]] = [(e.name, None, e.workspace) for e in endpoints if access.can(e.workspace)]
    bound = session.execute(
        select(tables.EndpointAdapter.adapter_name, tables.Endpoint.name)
        .join(tables.Endpoint, tables.Endpoint.id == tables.EndpointAdapter.endpoint_id)
        .join(tables.Adapter, tables.Adapter.id == tables.EndpointAdapter.adapter_id)
        .where(tables.EndpointAdapter.workspace == workspace, tables.Adapter.enabled.is_(True))
        .order_by(tables.EndpointAdapter.created_at)
    ).all()
    out += [(adapter, endpoint, workspace) for adapter, endpoint in bound]
    return out
