"""HTTP routes for adapters: workspace-level (``/adapters``) and nested under their model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from modelyard.adapters import service, store
from modelyard.adapters.schemas import (
    Adapter,
    CreateAdapterRequest,
    CreateModelAdapterRequest,
    UpdateAdapterRequest,
)
from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import ListQuery, Page, query_dependency

router = APIRouter(prefix="/apis/models/v2/workspaces/{workspace}", tags=["adapters"])
ListParams = Annotated[ListQuery, Depends(query_dependency(store.FILTERS))]
_list = {"response_model_exclude_none": True}  # list items drop nulls; a single entity carries every key


def _routing_changed(request: Request) -> Iterator[None]:
    """Declared before the session, so it exits after the session's commit and before the response:
    running endpoints then follow the change (a disabled adapter is unloaded) and the gateway's
    name cache is invalidated before the client can send its next request."""
    yield
    supervisor = getattr(request.app.state, "supervisor", None)
    if supervisor is not None:
        supervisor.changed()


RoutingChange = Annotated[None, Depends(_routing_changed, scope="function")]


@router.post("/models/{model_name}/adapters", status_code=201, response_model=Adapter)
def create_model_adapter(
    workspace: str, model_name: str, body: CreateModelAdapterRequest, session: SessionDep, request: Request,
    access: AccessDep,
) -> Adapter:
    """Adds an adapter to the model named in the path."""
    return service.create_nested(session, request.app.state.settings, workspace, model_name, body, access)


@router.patch("/models/{model_name}/adapters/{adapter}", response_model=Adapter)
def update_model_adapter(
    workspace: str, model_name: str, adapter: str, body: UpdateAdapterRequest, _: RoutingChange,
    session: SessionDep, request: Request, access: AccessDep,
) -> Adapter:
    return service.update(session, request.app.state.settings, workspace, adapter, body, access, model_name=model_name)


@router.delete("/models/{model_name}/adapters/{adapter}", status_code=204, response_class=Response)
def delete_model_adapter(workspace: str, model_name: str, adapter: str, session: SessionDep) -> Response:
    service.delete(session, workspace, adapter, model_name=model_name)
    return Response(status_code=204)


@router.post("/adapters", status_code=201, response_model=Adapter)
def create_adapter(
    workspace: str, body: CreateAdapterRequest, session: SessionDep, request: Request, access: AccessDep
) -> Adapter:
    """Create an adapter under the base model named by ``model`` in the body."""
    return service.create(session, request.app.state.settings, workspace, body, access)


@router.get("/adapters", response_model=Page[Adapter], **_list)
def list_adapters(workspace: str, session: SessionDep, query: ListParams, access: AccessDep) -> Page[Adapter]:
    return service.list_(session, workspace, query, access)


@router.get("/adapters/{name}", response_model=Adapter)
def get_adapter(workspace: str, name: str, session: SessionDep) -> Adapter:
    return service.get(session, workspace, name)


@router.patch("/adapters/{name}", response_model=Adapter)
def update_adapter(
    workspace: str, name: str, body: UpdateAdapterRequest, _: RoutingChange, session: SessionDep, request: Request,
    access: AccessDep,
) -> Adapter:
    """Change description, enabled, fileset or lora_config; any other field is 422. Disabling an
    adapter attached to an endpoint unloads it there; enabling it loads it again."""
    return service.update(session, request.app.state.settings, workspace, name, body, access)


@router.delete("/adapters/{name}", status_code=204, response_class=Response)
def delete_adapter(workspace: str, name: str, session: SessionDep) -> Response:
    service.delete(session, workspace, name)
    return Response(status_code=204)
