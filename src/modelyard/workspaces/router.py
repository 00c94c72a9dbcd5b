"""HTTP routes of the entities service: ``/apis/entities/v2/workspaces``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.workspaces import service, store
from modelyard.workspaces.schemas import CreateWorkspaceRequest, Workspace

router = APIRouter(prefix="/apis/entities/v2/workspaces", tags=["workspaces"])
Query = Annotated[ListQuery, Depends(query_dependency(store.FILTERS, default_sort="-created_at"))]


@router.get("", response_model=Page[Workspace])
def list_workspaces(session: SessionDep, access: AccessDep, query: Query) -> Page[Workspace]:
    return service.list_(session, access, query)


@router.post("", status_code=201, response_model=Workspace)
def create_workspace(body: CreateWorkspaceRequest, session: SessionDep, access: AccessDep) -> Workspace:
    return service.create(session, access, body)


@router.get("/{name}", response_model=Workspace)
def get_workspace(name: str, session: SessionDep) -> Workspace:
    return service.get(session, name)


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_workspace(name: str, session: SessionDep) -> Response:
    service.delete(session, name)
    return Response(status_code=204)
