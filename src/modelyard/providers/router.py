"""HTTP routes of model providers: ``/apis/models/v2/workspaces/{workspace}/providers``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response

from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.providers import service, store
from modelyard.providers.schemas import (
    CreateModelProviderRequest,
    ModelProvider,
    UpdateModelProviderStatusRequest,
    UpsertModelProviderRequest,
)

router = APIRouter(prefix="/apis/models/v2/workspaces/{workspace}/providers", tags=["providers"])
ListParams = Annotated[ListQuery, Depends(query_dependency(store.FILTERS))]


def _poke(request: Request, background: BackgroundTasks) -> None:
    """Have the poller ask the provider's /v1/models once this request's change is committed (background
    tasks run after the response, which is sent after the commit)."""
    routes = getattr(request.app.state, "registry_routes", None)
    if routes is not None:  # the gateway's one-second route cache: this server sees the change at once
        routes.clear()
        background.add_task(routes.clear)
    poller = getattr(request.app.state, "provider_poller", None)
    if poller is not None:
        background.add_task(poller.wake)


@router.post("", status_code=201, response_model=ModelProvider)
def create_provider(workspace: str, body: CreateModelProviderRequest, session: SessionDep, access: AccessDep,
                    request: Request, background: BackgroundTasks) -> ModelProvider:
    """Register an upstream OpenAI-compatible server; the server then asks its /v1/models in the
    background and fills served_models, status and status_message."""
    created = service.create(session, access, workspace, body)
    _poke(request, background)
    return created


@router.get("", response_model=Page[ModelProvider], response_model_exclude_none=True)
def list_providers(workspace: str, session: SessionDep, access: AccessDep, query: ListParams) -> Page[ModelProvider]:
    """List providers; workspace ``-`` lists across the workspaces the caller can read."""
    return service.list_(session, access, workspace, query)


@router.get("/{name}", response_model=ModelProvider)
def get_provider(workspace: str, name: str, session: SessionDep) -> ModelProvider:
    return service.get(session, workspace, name)


@router.put("/{name}", response_model=ModelProvider)
def upsert_provider(workspace: str, name: str, body: UpsertModelProviderRequest, session: SessionDep,
                    access: AccessDep, request: Request, background: BackgroundTasks) -> ModelProvider:
    """Replace the provider's whole configuration (fields left out are cleared), or create it."""
    result = service.upsert(session, access, workspace, name, body)
    _poke(request, background)
    return result


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_provider(workspace: str, name: str, session: SessionDep, request: Request,
                    background: BackgroundTasks) -> Response:
    service.delete(session, workspace, name)
    _poke(request, background)
    return Response(status_code=204)


@router.put("/{name}/status", response_model=ModelProvider)
def update_provider_status(workspace: str, name: str, body: UpdateModelProviderStatusRequest,
                           session: SessionDep) -> ModelProvider:
    """Set the discovered fields (served_models, status, status_message, model_deployment_id) only."""
    return service.update_status(session, workspace, name, body)
