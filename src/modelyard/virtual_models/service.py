"""Virtual model rules: what a virtual model may point at (checked at create and PATCH, against what the
gateway can call in the workspace right now), who may change one (Editor), and ``db_version`` as an
optimistic lock (a stale ``expected_db_version`` or a concurrent change is 409)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from modelyard.auth.crypto import Keyring
from modelyard.auth.principal import Access
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.errors import ApiError, Conflict, InvalidRequest, ServiceError, clip
from modelyard.gateway import resolver, upstream
from modelyard.listing import ListQuery, Page
from modelyard.providers.service import ProviderKeyError
from modelyard.virtual_models import store
from modelyard.virtual_models.schemas import (
    CreateVirtualModelRequest,
    UpdateVirtualModelRequest,
    VirtualModel,
    WeightedTarget,
)
from modelyard.workspaces import store as workspace_store

CHANGING = "changing virtual models"
CONCURRENT = "Concurrent modification - please retry."
MAX_TARGETS = 100
_MIDDLEWARE = ("request_middleware", "response_middleware", "post_response_middleware")


def to_wire(row: tables.VirtualModel) -> VirtualModel:
    return VirtualModel(
        name=row.name, workspace=row.workspace, project=row.project, default_model_entity=row.default_model_entity,
        autoprovisioned=row.autoprovisioned, models=row.models or [], targets=row.targets,
        request_middleware=row.request_middleware or [], response_middleware=row.response_middleware or [],
        post_response_middleware=row.post_response_middleware or [], override_proxy=row.override_proxy,
        guardrail_config_ids=[], id=row.id, created_at=row.created_at.replace(tzinfo=UTC),
        created_by=row.created_by, updated_at=row.updated_at.replace(tzinfo=UTC), updated_by=row.updated_by,
        entity_id=row.id, parent=None, db_version=row.db_version,
    )


def _callable(session: Session, keyring: Keyring, access: Access, workspace: str, model: str) -> bool:
    """Whether the gateway can call ``model`` in ``workspace`` now (our endpoints and adapters, then the
    registry), for a caller who can read where it lives."""
    try:
        target = resolver.resolve(session, workspace, model)
        if access.can(target.workspace):
            return True
    except ApiError:
        pass
    try:
        route = upstream.resolve(session, keyring, workspace, model)
    except (ProviderKeyError, ServiceError):  # it exists; its key cannot be read (the call will say so)
        return True
    return route is not None and all(access.can(ws) for ws in route.workspaces)


def _names_virtual(session: Session, workspace: str, own_name: str, model: str) -> bool:
    """Whether ``model`` names another virtual model (one cannot point at another)."""
    ws, _, name = model.rpartition("/")
    ws = ws or workspace
    return (ws, name) != (workspace, own_name) and store.find(session, ws, name) is not None


def _check_target(session: Session, keyring: Keyring, access: Access, workspace: str, own_name: str,
                  model: str, what: str) -> None:
    if _names_virtual(session, workspace, own_name, model):
        raise InvalidRequest(f"{what} '{clip(model, 100)}' is a virtual model; a virtual model cannot point at "
                             "another virtual model")
    if not _callable(session, keyring, access, workspace, model):
        raise InvalidRequest(f"{what} '{clip(model, 100)}' is not a model, adapter or endpoint the gateway can "
                             f"call in workspace '{workspace}'")


def _weight(target: WeightedTarget) -> int:
    weight = target.weight
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise InvalidRequest(f"the weight of target '{clip(target.model, 100)}' must be a positive integer, "
                             f"got {clip(repr(weight), 50)}")
    return weight


def _validated(session: Session, keyring: Keyring, access: Access, workspace: str, name: str,
               fields: dict[str, Any]) -> None:
    """The virtual model as it will be stored (``fields``) routes somewhere, and only where it may."""
    for key in _MIDDLEWARE:
        if fields[key]:
            raise InvalidRequest(f"{key}: this server runs no middleware plugins; send [] or leave it out")
    if fields["override_proxy"] is not None:
        raise InvalidRequest("override_proxy: this server has no proxy plugins; send null or leave it out")
    targets: list[WeightedTarget] | None = fields["targets"]
    if targets is not None:
        if not targets:
            raise InvalidRequest("targets must not be empty: name at least one target, or leave targets out to "
                                 "route to default_model_entity")
        if len(targets) > MAX_TARGETS:
            raise InvalidRequest(f"targets: at most {MAX_TARGETS} targets, got {len(targets)}")
        seen: set[str] = set()
        for target in targets:
            _weight(target)
            if target.model in seen:
                raise InvalidRequest(f"target '{clip(target.model, 100)}' is named twice; give it one weight")
            seen.add(target.model)
            _check_target(session, keyring, access, workspace, name, target.model, "target")
    elif fields["default_model_entity"] is None:
        raise InvalidRequest("a virtual model needs somewhere to route: set default_model_entity or targets")
    if fields["default_model_entity"] is not None:
        _check_target(session, keyring, access, workspace, name, fields["default_model_entity"],
                      "default_model_entity")


def _dumped(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    out["targets"] = None if fields["targets"] is None else [{"model": t.model, "weight": t.weight}
                                                             for t in fields["targets"]]
    out["models"] = [m.model_dump(mode="json") for m in fields["models"] or []]
    for key in _MIDDLEWARE:
        out[key] = [m.model_dump(mode="json") for m in fields[key] or []]
    return out


_FIELDS = ("default_model_entity", "autoprovisioned", "models", "targets", *_MIDDLEWARE, "override_proxy")


def create(session: Session, keyring: Keyring, access: Access, workspace: str,
           request: CreateVirtualModelRequest) -> VirtualModel:
    access.require(workspace, "Editor", CHANGING)
    workspace_store.require(session, workspace)
    fields = {key: getattr(request, key) for key in _FIELDS}
    _validated(session, keyring, access, workspace, request.name, fields)
    now = utcnow()
    row = tables.VirtualModel(
        id=new_id("virtual-model"), workspace=workspace, name=request.name, project=request.project,
        **_dumped(fields), created_by=access.who or None, updated_by=access.who or None, created_at=now,
        updated_at=now,
    )
    return to_wire(store.add(session, row))


def get(session: Session, workspace: str, name: str) -> VirtualModel:
    workspace_store.require(session, workspace)
    return to_wire(store.get(session, workspace, name))


def list_(session: Session, access: Access, workspace: str, query: ListQuery, *,
          exclude_autoprovisioned: bool = False) -> Page[VirtualModel]:
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, workspace if workspace != "-" else access.workspaces(), query,
                                   exclude_autoprovisioned=exclude_autoprovisioned)
    return Page[VirtualModel](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort,
                              filter=query.echo or None)


def update(session: Session, keyring: Keyring, access: Access, workspace: str, name: str,
           request: UpdateVirtualModelRequest) -> VirtualModel:
    """PATCH: the fields sent replace the stored ones; the result is checked as a whole."""
    access.require(workspace, "Editor", CHANGING)
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    stored = {
        "default_model_entity": row.default_model_entity, "autoprovisioned": row.autoprovisioned,
        "models": UpdateVirtualModelRequest.model_validate({"models": row.models or []}).models,
        "targets": None if row.targets is None else [WeightedTarget.model_validate(t) for t in row.targets],
        **{key: [] for key in _MIDDLEWARE}, "override_proxy": row.override_proxy,
    }
    sent = request.model_fields_set
    fields = {key: getattr(request, key) if key in sent else stored[key] for key in _FIELDS}
    _validated(session, keyring, access, workspace, name, fields)
    for key, value in _dumped(fields).items():
        if key in sent:
            setattr(row, key, value)
    row.updated_at = utcnow()
    row.updated_by = access.who or None
    try:
        session.flush()
    except StaleDataError:
        raise Conflict(CONCURRENT) from None
    return to_wire(row)


def delete(session: Session, access: Access, workspace: str, name: str, expected_db_version: int | None) -> None:
    access.require(workspace, "Editor", CHANGING)
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    if expected_db_version is not None and expected_db_version != row.db_version:
        raise Conflict(CONCURRENT)
    session.delete(row)
    try:
        session.flush()
    except StaleDataError:
        raise Conflict(CONCURRENT) from None
