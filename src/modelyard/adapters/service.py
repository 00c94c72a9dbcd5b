"""Adapter rules: both create paths, base-model resolution, nested routes that must agree with the path."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session

from modelyard.adapters import store
from modelyard.adapters.schemas import (
    Adapter,
    CreateAdapterRequest,
    CreateModelAdapterRequest,
    UpdateAdapterRequest,
)
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.endpoints import store as endpoint_store
from modelyard.errors import Conflict, NotFound
from modelyard.listing import ListQuery, Page
from modelyard.models import store as model_store
from modelyard.workspaces import store as workspace_store


def qualify(reference: str, workspace: str) -> str:
    """``name`` → ``workspace/name``; ``ws/name`` stays as it is."""
    return reference if "/" in reference else f"{workspace}/{reference}"


def to_wire(row: tables.Adapter) -> Adapter:
    return Adapter(
        name=row.name,
        workspace=row.workspace,
        description=row.description,
        fileset=row.fileset,
        finetuning_type=row.finetuning_type,
        enabled=row.enabled,
        lora_config=row.lora_config,
        model=row.model,
        created_at=row.created_at.replace(tzinfo=UTC),
        updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def _insert(session: Session, workspace: str, base: tables.Model, request: CreateModelAdapterRequest) -> Adapter:
    now = utcnow()
    row = tables.Adapter(
        id=new_id("adapter"),
        workspace=workspace,
        name=request.name,
        model_id=base.id,
        model=f"{base.workspace}/{base.name}",
        description=request.description,
        fileset=qualify(request.fileset, workspace),
        finetuning_type=request.finetuning_type.value,
        enabled=request.enabled,
        lora_config=request.lora_config.model_dump(exclude_none=True) if request.lora_config else None,
        created_at=now,
        updated_at=now,
    )
    return to_wire(store.add(session, row))


def create_nested(
    session: Session, workspace: str, model_name: str, request: CreateModelAdapterRequest
) -> Adapter:
    """``POST …/models/{model_name}/adapters``: the base model comes from the path."""
    workspace_store.require(session, workspace)
    base = model_store.get(session, workspace, model_name)
    return _insert(session, workspace, base, request)


def create(session: Session, workspace: str, request: CreateAdapterRequest) -> Adapter:
    """``POST …/adapters``: the base model is ``model`` in the body, possibly in another workspace."""
    workspace_store.require(session, workspace)
    base_ws, _, base_name = qualify(request.model, workspace).partition("/")
    base = model_store.find(session, base_ws, base_name)
    if base is None:
        raise NotFound(f"Base model for adapter (model='{request.model}') not found")
    return _insert(session, workspace, base, request)


def _in_scope(session: Session, workspace: str, name: str, model_name: str | None) -> tables.Adapter:
    """The adapter, checked against the nested route's model when there is one."""
    workspace_store.require(session, workspace)
    if model_name is None:
        return store.get(session, workspace, name)
    base = model_store.get(session, workspace, model_name)
    row = store.get(session, workspace, name)
    if row.model_id != base.id:
        raise NotFound(f"Adapter '{name}' not found for model '{workspace}/{model_name}'")
    return row


def get(session: Session, workspace: str, name: str) -> Adapter:
    return to_wire(_in_scope(session, workspace, name, None))


def list_(session: Session, workspace: str, query: ListQuery) -> Page[Adapter]:
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, None if workspace == "-" else workspace, query)
    return Page[Adapter](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo)


def update(
    session: Session, workspace: str, name: str, request: UpdateAdapterRequest, model_name: str | None = None
) -> Adapter:
    row = _in_scope(session, workspace, name, model_name)
    changes: dict[str, Any] = request.model_dump(exclude_unset=True, mode="json")
    if "fileset" in changes:
        changes["fileset"] = qualify(changes["fileset"], workspace)
    if "lora_config" in changes and changes["lora_config"] is not None:
        changes["lora_config"] = {k: v for k, v in changes["lora_config"].items() if v is not None}
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = utcnow()
    session.flush()
    return to_wire(row)


def delete(session: Session, workspace: str, name: str, model_name: str | None = None) -> None:
    row = _in_scope(session, workspace, name, model_name)
    refuse_if_attached(session, [row])
    store.delete(session, row)


def refuse_if_attached(session: Session, adapters: list[tables.Adapter]) -> None:
    """409 while any of these adapters is attached to an endpoint: detach first, so nothing serves a
    deleted adapter."""
    bindings = endpoint_store.bindings_of_adapters(session, [a.id for a in adapters])
    if bindings:
        binding = bindings[0]
        endpoint = endpoint_store.find(session, binding.endpoint_id)
        raise Conflict(
            f"Adapter '{binding.workspace}/{binding.adapter_name}' is attached to endpoint "
            f"'{endpoint.name if endpoint else binding.endpoint_id}'; detach it first "
            f"(DELETE /v1/endpoints/{binding.endpoint_id}/adapters)"
        )
