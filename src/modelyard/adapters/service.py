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
from modelyard.auth.principal import Access
from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.endpoints import store as endpoint_store
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.filesets import service as fileset_service
from modelyard.listing import ListQuery, Page
from modelyard.models import store as model_store
from modelyard.spec import SpecError, incompatibilities, inspect_adapter
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


def check_files(
    session: Session, settings: Settings, reference: str, base: tables.Model, finetuning_type: str,
    lora_config: dict[str, Any] | None, access: Access,
) -> dict[str, Any] | None:
    """The fileset must exist and hold files. When it holds a PEFT adapter, its facts fill
    ``lora_config`` if the request left it out, must agree with what the request says, and every
    lora_A/lora_B tensor must fit its base layer (422 otherwise). Returns the lora_config to store."""
    row = fileset_service.require_fileset(session, reference, non_empty=True, access=access)
    try:
        facts = inspect_adapter(fileset_service.files_of(session, settings, row))
    except SpecError as exc:
        raise Unprocessable(f"adapter files in fileset '{reference}' cannot be read: {exc}") from None
    if facts is None:
        return lora_config
    peft_like = finetuning_type in ("lora", "dora", "qlora")
    if peft_like and facts.peft_type != "LORA":
        raise Unprocessable(f"finetuning_type '{finetuning_type}' contradicts the adapter files: "
                            f"adapter_config.json has peft_type '{facts.peft_type}'")
    if finetuning_type == "dora" and not facts.use_dora:
        raise Unprocessable("finetuning_type 'dora' contradicts the adapter files: adapter_config.json has no "
                            "use_dora: true")
    if finetuning_type in ("lora", "qlora") and facts.use_dora:
        raise Unprocessable(f"finetuning_type '{finetuning_type}' contradicts the adapter files: "
                            "adapter_config.json has use_dora: true (use 'dora')")
    if lora_config is None:
        if facts.rank >= 1:
            lora_config = {"rank": facts.rank, **({"alpha": facts.alpha} if facts.alpha else {})}
    elif facts.rank >= 1 and lora_config.get("rank") != facts.rank:
        raise Unprocessable(f"lora_config.rank is {lora_config.get('rank')} but the adapter files have "
                            f"r={facts.rank}; leave lora_config out to take it from the files")
    layers = (base.spec or {}).get("linear_layers")
    if layers:
        problems = incompatibilities(facts, layers)
        if problems:
            raise Unprocessable(f"adapter is not compatible with base model '{base.workspace}/{base.name}': "
                                + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return lora_config


def _insert(
    session: Session, settings: Settings, workspace: str, base: tables.Model, request: CreateModelAdapterRequest,
    access: Access, *, nested: bool = False,
) -> Adapter:
    now = utcnow()
    fileset = qualify(request.fileset, workspace)
    lora_config = request.lora_config.model_dump(exclude_none=True) if request.lora_config else None
    lora_config = check_files(session, settings, fileset, base, request.finetuning_type.value, lora_config, access)
    row = tables.Adapter(
        id=new_id("adapter"),
        workspace=workspace,
        name=request.name,
        model_id=base.id,
        model=f"{base.workspace}/{base.name}",
        description=request.description,
        fileset=fileset,
        finetuning_type=request.finetuning_type.value,
        enabled=request.enabled,
        lora_config=lora_config,
        created_at=now,
        updated_at=now,
    )
    # the reference words the conflict after the route it came through
    conflict = f"Model adapter already exists: {base.workspace}/{base.name}/{request.name}" if nested else None
    return to_wire(store.add(session, row, conflict))


def create_nested(
    session: Session, settings: Settings, workspace: str, model_name: str, request: CreateModelAdapterRequest,
    access: Access,
) -> Adapter:
    """``POST …/models/{model_name}/adapters``: the base model comes from the path."""
    workspace_store.require(session, workspace)
    base = model_store.get(session, workspace, model_name)
    return _insert(session, settings, workspace, base, request, access, nested=True)


def create(
    session: Session, settings: Settings, workspace: str, request: CreateAdapterRequest, access: Access
) -> Adapter:
    """``POST …/adapters``: the base model is ``model`` in the body, possibly in another workspace (one
    the caller can read: any other is answered as if the model did not exist)."""
    workspace_store.require(session, workspace)
    base_ws, _, base_name = qualify(request.model, workspace).partition("/")
    base = model_store.find(session, base_ws, base_name)
    if base is None or not access.can(base_ws):
        raise NotFound(f"Base model for adapter (model='{request.model}') not found")
    return _insert(session, settings, workspace, base, request, access)


def _in_scope(session: Session, workspace: str, name: str, model_name: str | None) -> tables.Adapter:
    """The adapter, checked against the nested route's model when there is one."""
    workspace_store.require(session, workspace)
    if model_name is None:
        return store.get(session, workspace, name)
    base = model_store.get(session, workspace, model_name)
    row = store.find(session, workspace, name)
    if row is None or row.model_id != base.id:
        raise NotFound(f"Adapter {name} with workspace '{workspace}' and model name '{model_name}' not found")
    return row


def get(session: Session, workspace: str, name: str) -> Adapter:
    return to_wire(_in_scope(session, workspace, name, None))


def list_(session: Session, workspace: str, query: ListQuery, access: Access) -> Page[Adapter]:
    """One workspace's adapters; ``-``: every workspace the caller can read."""
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, workspace if workspace != "-" else access.workspaces(), query)
    return Page[Adapter](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo or None)


def update(
    session: Session, settings: Settings, workspace: str, name: str, request: UpdateAdapterRequest,
    access: Access, model_name: str | None = None,
) -> Adapter:
    row = _in_scope(session, workspace, name, model_name)
    changes: dict[str, Any] = request.model_dump(exclude_unset=True, mode="json")
    if "fileset" in changes:
        changes["fileset"] = qualify(changes["fileset"], workspace)
    if "lora_config" in changes and changes["lora_config"] is not None:
        changes["lora_config"] = {k: v for k, v in changes["lora_config"].items() if v is not None}
    if changes.get("fileset") is not None:
        base = session.get(tables.Model, row.model_id)
        given = changes.get("lora_config") if "lora_config" in changes else None
        checked = check_files(session, settings, changes["fileset"], base, row.finetuning_type, given, access)
        if checked is not None:
            changes["lora_config"] = checked
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
