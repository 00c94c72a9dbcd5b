"""HTTP routes of the models service: ``/apis/models/v2/workspaces/{workspace}/models``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.models import service, store
from modelyard.models.schemas import CreateModelEntityRequest, ModelEntity, UpdateModelEntityRequest

# a single model carries every key of its schema (null, {} or []); list items drop their nulls, as the
# reference's do
router = APIRouter(prefix="/apis/models/v2/workspaces/{workspace}/models", tags=["models"])
ListParams = Annotated[ListQuery, Depends(query_dependency(store.FILTERS))]
Verbose = Annotated[bool, Query(description="Include spec.linear_layers")]


@router.post("", status_code=201, response_model=ModelEntity)
def create_model(
    workspace: str, body: CreateModelEntityRequest, session: SessionDep, request: Request, access: AccessDep
) -> ModelEntity:
    """Create a new model entity."""
    return service.create(
        session, workspace, body, settings=request.app.state.settings, keyring=request.app.state.keyring,
        access=access,
    )


@router.get("", response_model=Page[ModelEntity], response_model_exclude_none=True)
def list_models(
    workspace: str, session: SessionDep, query: ListParams, request: Request, access: AccessDep,
    verbose: Verbose = False,
) -> Page[ModelEntity]:
    """List models; workspace ``-`` lists across all workspaces."""
    return service.list_(session, workspace, query, verbose=verbose, keyring=request.app.state.keyring, access=access)


@router.get("/{name}", response_model=ModelEntity)
def get_model(workspace: str, name: str, session: SessionDep, request: Request, verbose: Verbose = False) -> ModelEntity:
    return service.get(session, workspace, name, verbose=verbose, keyring=request.app.state.keyring)


@router.patch("/{name}", response_model=ModelEntity)
def update_model(
    workspace: str, name: str, body: UpdateModelEntityRequest, session: SessionDep, request: Request,
    access: AccessDep,
) -> ModelEntity:
    """Merge the given fields into the model; ``null`` clears an optional field."""
    return service.update(
        session, workspace, name, body, settings=request.app.state.settings, keyring=request.app.state.keyring,
        access=access,
    )


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_model(workspace: str, name: str, session: SessionDep) -> Response:
    """Delete the model and its adapters."""
    service.delete(session, workspace, name)
    return Response(status_code=204)
