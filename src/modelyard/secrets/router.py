"""HTTP routes of the secrets service: ``/apis/secrets/v2/...``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from modelyard.auth.crypto import Keyring
from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.secrets import service, store
from modelyard.secrets.schemas import (
    CreateSecretRequest,
    RotationResult,
    SecretAccess,
    SecretEntity,
    UpdateSecretRequest,
)

router = APIRouter(prefix="/apis/secrets/v2", tags=["secrets"])
Query = Annotated[ListQuery, Depends(query_dependency(store.FILTERS))]
SECRETS = "/workspaces/{workspace}/secrets"


def _keyring(request: Request) -> Keyring:
    return request.app.state.keyring


@router.post(SECRETS, status_code=201, response_model=SecretEntity)
def create_secret(
    workspace: str, body: CreateSecretRequest, session: SessionDep, access: AccessDep, request: Request
) -> SecretEntity:
    """Create a secret; the response never contains the value."""
    return service.create(
        session, _keyring(request), access, workspace,
        name=body.name, description=body.description, value=body.value.get_secret_value(),
    )


@router.get(SECRETS, response_model=Page[SecretEntity])
def list_secrets(workspace: str, session: SessionDep, access: AccessDep, query: Query) -> Page[SecretEntity]:
    return service.list_(session, access, workspace, query)


@router.get(SECRETS + "/{name}", response_model=SecretEntity)
def get_secret(workspace: str, name: str, session: SessionDep, access: AccessDep) -> SecretEntity:
    return service.get(session, access, workspace, name)


@router.patch(SECRETS + "/{name}", response_model=SecretEntity)
def update_secret(
    workspace: str, name: str, body: UpdateSecretRequest, session: SessionDep, access: AccessDep, request: Request
) -> SecretEntity:
    """Change the description (``null`` clears it) or the value (``null`` keeps it)."""
    changes: dict[str, str | None] = {}
    if "description" in body.model_fields_set:
        changes["description"] = body.description
    if body.value is not None:
        changes["value"] = body.value.get_secret_value()
    return service.update(session, _keyring(request), access, workspace, name, changes)


@router.delete(SECRETS + "/{name}", status_code=204, response_class=Response)
def delete_secret(workspace: str, name: str, session: SessionDep, access: AccessDep) -> Response:
    service.delete(session, access, workspace, name)
    return Response(status_code=204)


@router.get(SECRETS + "/{name}/access", response_model=SecretAccess)
def access_secret(
    workspace: str, name: str, session: SessionDep, access: AccessDep, request: Request
) -> SecretAccess:
    """The secret's value (Editor role)."""
    return service.reveal(session, _keyring(request), access, workspace, name)


@router.post("/rotate-encryption-keys", status_code=202, response_model=RotationResult)
def rotate_encryption_keys(session: SessionDep, access: AccessDep, request: Request) -> RotationResult:
    """PlatformAdmin: add a new primary key and re-encrypt every stored secret under it (done by the
    time the answer comes; 202 as on the reference)."""
    def install(keyring: Keyring) -> None:
        request.app.state.keyring = keyring

    return service.rotate(session, access, lambda: _keyring(request), install)
