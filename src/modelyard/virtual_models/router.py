"""HTTP routes of virtual models: ``/apis/inference-gateway/v2/workspaces/{workspace}/virtual-models``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response

from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.gateway import virtual
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.virtual_models import service, store
from modelyard.virtual_models.schemas import (
    CreateVirtualModelRequest,
    UpdateVirtualModelRequest,
    VirtualModel,
)

router = APIRouter(prefix="/apis/inference-gateway/v2/workspaces/{workspace}/virtual-models",
                   tags=["virtual models"])
ListParams = Annotated[ListQuery, Depends(query_dependency(store.FILTERS, default_page_size=20, max_page_size=200,
                                                           default_sort="-created_at"))]


def _changed(request: Request, background: BackgroundTasks) -> None:
    """This server's gateway sees the change at once (now, and again once the change is committed)."""
    virtual.clear(request)
    background.add_task(virtual.clear, request)


@router.post("", status_code=201, response_model=VirtualModel)
def create_virtual_model(workspace: str, body: CreateVirtualModelRequest, session: SessionDep, access: AccessDep,
                         request: Request, background: BackgroundTasks) -> VirtualModel:
    """A stable model name that routes to ``default_model_entity`` or, by weight, to one of ``targets``
    (each a model, adapter or endpoint the gateway can call in the workspace). Needs Editor."""
    created = service.create(session, request.app.state.keyring, access, workspace, body)
    _changed(request, background)
    return created


@router.get("", response_model=Page[VirtualModel], response_model_exclude_none=True)
def list_virtual_models(workspace: str, session: SessionDep, access: AccessDep, query: ListParams,
                        exclude_autoprovisioned: bool = False) -> Page[VirtualModel]:
    """List virtual models, newest first; workspace ``-`` lists across the workspaces the caller can read."""
    return service.list_(session, access, workspace, query, exclude_autoprovisioned=exclude_autoprovisioned)


@router.get("/{name}", response_model=VirtualModel)
def get_virtual_model(workspace: str, name: str, session: SessionDep) -> VirtualModel:
    return service.get(session, workspace, name)


@router.patch("/{name}", response_model=VirtualModel)
def update_virtual_model(workspace: str, name: str, body: UpdateVirtualModelRequest, session: SessionDep,
                         access: AccessDep, request: Request, background: BackgroundTasks) -> VirtualModel:
    """Change the fields sent (e.g. move traffic between ``targets``); ``db_version`` goes up by one."""
    updated = service.update(session, request.app.state.keyring, access, workspace, name, body)
    _changed(request, background)
    return updated


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_virtual_model(workspace: str, name: str, session: SessionDep, access: AccessDep, request: Request,
                         background: BackgroundTasks,
                         expected_db_version: Annotated[int | None, Query(
                             description="Delete only if the virtual model still has this db_version (409 "
                                         "otherwise)")] = None) -> Response:
    service.delete(session, access, workspace, name, expected_db_version)
    _changed(request, background)
    return Response(status_code=204)
