"""Model rules: fileset references, trust_remote_code policy, the API key (encrypted, masked), PATCH merging."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from modelyard.adapters import service as adapter_service
from modelyard.adapters.service import qualify
from modelyard.auth.crypto import Keyring
from modelyard.auth.principal import Access
from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.endpoints import store as endpoint_store
from modelyard.errors import Conflict, Forbidden
from modelyard.filesets import service as fileset_service
from modelyard.listing import ListQuery, Page
from modelyard.models import store
from modelyard.models.schemas import (
    CreateModelEntityRequest,
    ModelEntity,
    ModelSpec,
    UpdateModelEntityRequest,
)
from modelyard.secrets.service import merge_api_endpoint, seal_api_key, shown_api_endpoint
from modelyard.spec import SpecError, inspect_checkpoint
from modelyard.workspaces import store as workspace_store

_SCHEMA_OBJECTS = ("spec", "api_endpoint", "prompt")  # stored without their unset (null) members


log = logging.getLogger("modelyard.models")


def to_wire(row: tables.Model, adapters: list[tables.Adapter], *, verbose: bool, keyring: Keyring) -> ModelEntity:
    spec = dict(row.spec) if row.spec is not None else None
    if spec is not None and not verbose:
        spec.pop("linear_layers", None)
    api_endpoint = shown_api_endpoint(keyring, row.api_endpoint)  # the key masked, never its ciphertext
    return ModelEntity(
        id=row.id,
        name=row.name,
        workspace=row.workspace,
        project=row.project,
        created_at=row.created_at.replace(tzinfo=UTC),
        updated_at=row.updated_at.replace(tzinfo=UTC),
        description=row.description,
        spec=spec,
        finetuning_type=row.finetuning_type,
        fileset=row.fileset,
        trust_remote_code=row.trust_remote_code,
        base_model=row.base_model,
        api_endpoint=api_endpoint,
        backend_format=row.backend_format,
        adapters=[adapter_service.to_wire(a) for a in adapters],
        prompt=row.prompt,
        custom_fields=row.custom_fields or {},
        ownership=row.ownership,
        model_providers=row.model_providers or [],
    )


def _check_trust(trust_remote_code: bool, fileset: str | None, trusted: Collection[str],
                 access: Access, workspace: str) -> None:
    """Remote code runs only from filesets in workspaces an operator has listed as trusted (whose
    filesets only their Admins can write), or when the model's workspace Admin says so."""
    if not trust_remote_code or (access.enforced and access.can(workspace, "Admin")):
        return
    if fileset is None:
        raise Forbidden(
            "trust_remote_code=true needs a fileset in a trusted workspace, and this model has no fileset. "
            "Set 'fileset' to a fileset in a workspace listed in MODELYARD_TRUSTED_FILESET_WORKSPACES."
        )
    fileset_ws = fileset.split("/", 1)[0]
    if fileset_ws not in trusted:
        raise Forbidden(
            f"trust_remote_code=true is not allowed for fileset '{fileset}': workspace '{fileset_ws}' is not "
            f"trusted. An operator can allow it by adding '{fileset_ws}' to the comma-separated setting "
            "MODELYARD_TRUSTED_FILESET_WORKSPACES and restarting the server."
        )


def _derive_spec(session: Session, settings: Settings, reference: str, name: str, given: dict[str, Any] | None,
                 access: Access) -> dict[str, Any] | None:
    """The spec read from the fileset's files, with any field the user gave winning; the user's spec
    alone when the files say nothing (no config.json: logged, not an error)."""
    row = fileset_service.require_fileset(session, reference, non_empty=False, access=access)
    try:
        derived = inspect_checkpoint(fileset_service.files_of(session, settings, row), name)
    except SpecError as exc:
        log.info("spec not derived from fileset", extra={"fileset": reference, "model": name, "reason": str(exc)})
        return given
    merged = {**derived, **(given or {})}
    try:  # what the files said must still make a valid ModelSpec (responses are validated against it)
        ModelSpec.model_validate(merged)
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        log.info("spec not derived from fileset", extra={"fileset": reference, "model": name, "reason": reason})
        return given
    return merged


def create(
    session: Session, workspace: str, request: CreateModelEntityRequest, *, settings: Settings, keyring: Keyring,
    access: Access,
) -> ModelEntity:
    workspace_store.require(session, workspace)
    fields = {k: v for k, v in _column_values(request).items() if v is not None and k != "name"}
    if "fileset" in fields:
        fields["fileset"] = qualify(fields["fileset"], workspace)
        fields["spec"] = _derive_spec(session, settings, fields["fileset"], request.name, fields.get("spec"), access)
    _check_trust(request.trust_remote_code, fields.get("fileset"), settings.trusted_fileset_workspaces, access,
                 workspace)
    if "api_endpoint" in fields:
        fields["api_endpoint"] = seal_api_key(keyring, fields["api_endpoint"])
    now = utcnow()
    row = tables.Model(id=new_id("model"), workspace=workspace, name=request.name, created_at=now, updated_at=now)
    for field, value in fields.items():
        setattr(row, field, value)
    return to_wire(store.add(session, row), [], verbose=True, keyring=keyring)


def get(session: Session, workspace: str, name: str, *, verbose: bool = False, keyring: Keyring) -> ModelEntity:
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    return to_wire(row, store.adapters_of(session, [row.id])[row.id], verbose=verbose, keyring=keyring)


def list_(
    session: Session, workspace: str, query: ListQuery, *, verbose: bool = False, keyring: Keyring, access: Access
) -> Page[ModelEntity]:
    """One workspace's models; ``-``: every workspace the caller can read."""
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, workspace if workspace != "-" else access.workspaces(), query)
    adapters = store.adapters_of(session, [r.id for r in rows])
    return Page[ModelEntity](
        data=[to_wire(r, adapters[r.id], verbose=verbose, keyring=keyring) for r in rows],
        pagination=pagination,
        sort=query.sort,
        filter=query.echo or None,
    )


def update(
    session: Session, workspace: str, name: str, request: UpdateModelEntityRequest, *, settings: Settings,
    keyring: Keyring, access: Access,
) -> ModelEntity:
    """Merge: fields left out keep their value; an explicit null clears the field."""
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    changes = _column_values(request)
    if changes.get("fileset") is not None:
        changes["fileset"] = qualify(changes["fileset"], workspace)
        if "spec" not in changes or changes["spec"] is not None:
            changes["spec"] = _derive_spec(session, settings, changes["fileset"], name, changes.get("spec"), access)
    if "api_endpoint" in changes:  # the masked key echoed back keeps the stored one, unless the url changed
        changes["api_endpoint"] = merge_api_endpoint(keyring, row.api_endpoint, changes["api_endpoint"])
    _check_trust(
        changes.get("trust_remote_code", row.trust_remote_code), changes.get("fileset", row.fileset),
        settings.trusted_fileset_workspaces, access, workspace,
    )
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = utcnow()
    session.flush()
    return to_wire(row, store.adapters_of(session, [row.id])[row.id], verbose=True, keyring=keyring)


def delete(session: Session, workspace: str, name: str) -> None:
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    serving = endpoint_store.endpoints_of_model(session, row.id)
    if serving:
        raise Conflict(f"Model '{workspace}/{name}' is served by endpoint '{serving[0].name}'; delete the endpoint first")
    adapter_service.refuse_if_attached(session, store.adapters_of(session, [row.id])[row.id])
    store.delete(session, row)


def _column_values(request: CreateModelEntityRequest | UpdateModelEntityRequest) -> dict[str, Any]:
    values = request.model_dump(mode="json", exclude_unset=True)
    for field in _SCHEMA_OBJECTS:
        if values.get(field) is not None:
            values[field] = _drop_nones(values[field])
    return values


def _drop_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    return value
