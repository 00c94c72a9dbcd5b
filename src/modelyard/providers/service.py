"""Model provider rules: the auth header template checked up front, the key read from the workspace's
secrets only when a provider is called, status fields set by the poller or the ``/status`` route."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session

from modelyard.auth.crypto import Keyring, KeyringError
from modelyard.auth.principal import Access
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.errors import Conflict, InvalidRequest
from modelyard.listing import ListQuery, Page
from modelyard.providers import auth_header, store
from modelyard.providers.schemas import (
    AuthContext,
    CreateModelProviderRequest,
    ModelProvider,
    UpdateModelProviderStatusRequest,
    UpsertModelProviderRequest,
    check_host_url,
)
from modelyard.workspaces import store as workspace_store
from modelyard.workspaces.schemas import check_name

CREATED_MESSAGE = "Model provider created"
_CONFIG_FIELDS = ("project", "description", "host_url", "api_key_secret_name", "enabled_models",
                  "default_extra_body", "default_extra_headers", "required_extra_body", "required_extra_headers",
                  "model_deployment_id", "auth_header_format")


def to_wire(row: tables.ModelProvider) -> ModelProvider:
    return ModelProvider(
        id=row.id, name=row.name, workspace=row.workspace, project=row.project,
        created_at=row.created_at.replace(tzinfo=UTC), updated_at=row.updated_at.replace(tzinfo=UTC),
        description=row.description, host_url=row.host_url, api_key_secret_name=row.api_key_secret_name,
        served_models=row.served_models if row.served_models is not None else [],
        enabled_models=row.enabled_models, status=row.status, status_message=row.status_message,
        default_extra_body=row.default_extra_body, default_extra_headers=row.default_extra_headers,
        required_extra_body=row.required_extra_body, required_extra_headers=row.required_extra_headers,
        model_deployment_id=row.model_deployment_id, auth_context=AuthContext(principal_id=row.created_by or ""),
        auth_header_format=row.auth_header_format,
    )


def _check_template(template: str | None) -> None:
    try:
        auth_header.check(template)
    except auth_header.AuthHeaderError as exc:
        raise InvalidRequest(str(exc)) from None


def _config(request: CreateModelProviderRequest | UpsertModelProviderRequest) -> dict[str, Any]:
    try:
        check_host_url(request.host_url)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    _check_template(request.auth_header_format)
    return {field: getattr(request, field) for field in _CONFIG_FIELDS}


def create(session: Session, access: Access, workspace: str, request: CreateModelProviderRequest) -> ModelProvider:
    workspace_store.require(session, workspace)
    now = utcnow()
    row = tables.ModelProvider(
        id=new_id("model-provider"), workspace=workspace, name=request.name, **_config(request),
        served_models=[], status=(request.status or "CREATED"),
        status_message=request.status_message if request.status_message is not None else CREATED_MESSAGE,
        created_by=access.who or None, created_at=now, updated_at=now,
    )
    return to_wire(store.add(session, row))


def get(session: Session, workspace: str, name: str) -> ModelProvider:
    workspace_store.require(session, workspace)
    return to_wire(store.get(session, workspace, name))


def list_(session: Session, access: Access, workspace: str, query: ListQuery) -> Page[ModelProvider]:
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, workspace if workspace != "-" else access.workspaces(), query)
    return Page[ModelProvider](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort,
                               filter=query.echo)


def upsert(session: Session, access: Access, workspace: str, name: str,
           request: UpsertModelProviderRequest) -> ModelProvider:
    """Replace every configurable field (create the provider when it does not exist). The discovered
    ``served_models`` are kept; the poller looks again soon."""
    workspace_store.require(session, workspace)
    try:
        check_name(name)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    config = _config(request)
    row = store.find(session, workspace, name)
    now = utcnow()
    if row is not None:
        _configurable(row)
    if row is None:
        row = tables.ModelProvider(
            id=new_id("model-provider"), workspace=workspace, name=name, **config, served_models=[],
            status=request.status or "CREATED",
            status_message=request.status_message if request.status_message is not None else CREATED_MESSAGE,
            created_by=access.who or None, created_at=now, updated_at=now,
        )
        return to_wire(store.add(session, row))
    for field, value in config.items():
        setattr(row, field, value)
    if request.status is not None:
        row.status = request.status
        row.status_message = request.status_message or ""
    elif request.status_message is not None:
        row.status_message = request.status_message
    row.updated_at = now
    session.flush()
    return to_wire(row)


def update_status(session: Session, workspace: str, name: str,
                  request: UpdateModelProviderStatusRequest) -> ModelProvider:
    workspace_store.require(session, workspace)
    row = _configurable(store.get(session, workspace, name))
    sent = request.model_fields_set
    if "served_models" in sent:
        row.served_models = [m.model_dump() for m in request.served_models or []]
    if "model_deployment_id" in sent:
        row.model_deployment_id = request.model_deployment_id
    if request.status is not None:
        row.status = request.status
        row.status_message = request.status_message or ""
    elif request.status_message is not None:
        row.status_message = request.status_message
    row.updated_at = utcnow()
    session.flush()
    return to_wire(row)


def delete(session: Session, workspace: str, name: str) -> None:
    workspace_store.require(session, workspace)
    store.delete(session, _configurable(store.get(session, workspace, name)))


class ProviderKeyError(Exception):
    """The provider's key cannot be read (no such secret, or undecryptable); the message names the
    secret, never a value."""


def api_key(session: Session, keyring: Keyring, row: tables.ModelProvider) -> str | None:
    """The clear key from the workspace secret ``api_key_secret_name`` (None when none is named)."""
    if not row.api_key_secret_name:
        return None
    secret = session.get(tables.Secret, (row.workspace, row.api_key_secret_name))
    if secret is None:
        raise ProviderKeyError(f"the API key secret '{row.workspace}/{row.api_key_secret_name}' of provider "
                               f"'{row.workspace}/{row.name}' does not exist")
    try:
        return keyring.decrypt(secret.ciphertext)
    except KeyringError:
        raise ProviderKeyError(f"the API key secret '{row.workspace}/{row.api_key_secret_name}' cannot be decrypted "
                               "with the server's MODELYARD_SECRET_KEY") from None


# ----- our own endpoints, as providers of their base model and adapters -----------------------------

ENDPOINT_URL = "modelyard://endpoints/"
"""``host_url`` of the provider that stands for one of our endpoints (no user's provider can have it:
theirs must be http(s)); the gateway routes such a provider through the endpoint's replicas."""
_STATUS_OF_STATE = {"STARTED": "READY", "ERROR": "ERROR", "PENDING": "PENDING", "STARTING": "PENDING",
                    "STOPPING": "PENDING", "STOPPED": "UNKNOWN"}


def endpoint_of(row: tables.ModelProvider) -> str | None:
    """The endpoint id a provider stands for, or None for a provider someone configured."""
    return row.host_url[len(ENDPOINT_URL):] if row.host_url.startswith(ENDPOINT_URL) else None


def _endpoint_provider_name(endpoint_name: str) -> str:
    local = endpoint_name.partition("/")[2] or endpoint_name
    return local if len(local) <= 63 else local[:54] + local[-9:]  # keeps the endpoint's 8-hex suffix


def sync_endpoint(session: Session, endpoint: tables.Endpoint) -> None:
    """Make the provider that stands for ``endpoint`` say what it serves now: its base model (as the
    endpoint's name) and each attached adapter (as its own name), with a status from the endpoint's
    state. Made on first call; a name a configured provider already has is left to that provider."""
    from modelyard.endpoints import store as endpoint_store  # the endpoints domain knows its bindings

    served = [{"model_entity_id": endpoint.model, "served_model_name": endpoint.name}]
    served += [{"model_entity_id": f"{a.workspace}/{a.name}", "served_model_name": a.name}
               for a in endpoint_store.attached_adapters(session, endpoint.id)]
    status = _STATUS_OF_STATE.get(endpoint.state, "UNKNOWN")
    message = f"endpoint {endpoint.name} is {endpoint.state}" + (f": {endpoint.error}" if endpoint.error else "")
    row = store.find_endpoint(session, ENDPOINT_URL + endpoint.id)
    now = utcnow()
    if row is None:
        name = _endpoint_provider_name(endpoint.name)
        if store.find(session, endpoint.workspace, name) is not None:
            return
        session.add(tables.ModelProvider(
            id=new_id("model-provider"), workspace=endpoint.workspace, name=name,
            description=f"Modelyard endpoint {endpoint.name}", host_url=ENDPOINT_URL + endpoint.id,
            served_models=served, status=status, status_message=message, model_deployment_id=endpoint.id,
            created_by=None, created_at=now, updated_at=now,
        ))
        session.flush()
        return
    if (row.served_models, row.status, row.status_message) != (served, status, message):
        row.served_models, row.status, row.status_message, row.updated_at = served, status, message[:1000], now


def drop_endpoint(session: Session, endpoint_id: str) -> None:
    row = store.find_endpoint(session, ENDPOINT_URL + endpoint_id)
    if row is not None:
        store.delete(session, row)


def _configurable(row: tables.ModelProvider) -> tables.ModelProvider:
    if endpoint_of(row) is not None:
        raise Conflict(f"Model provider '{row.workspace}/{row.name}' stands for endpoint {endpoint_of(row)}: it "
                       "changes with the endpoint (attach, detach, state) and goes when it is deleted")
    return row
