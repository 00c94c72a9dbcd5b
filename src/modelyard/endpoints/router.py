"""``/v1/endpoints`` and ``/v1/hardware``: Together's dedicated-endpoint API (so its SDK works as is)."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from modelyard.auth.deps import AccessDep, CallerWorkspace
from modelyard.db.session import in_db
from modelyard.endpoints import service
from modelyard.endpoints.schemas import (
    AdapterModelId,
    AdapterRemoved,
    AttachedAdapterList,
    CreateEndpointRequest,
    Endpoint,
    EndpointList,
    HardwareList,
    UpdateEndpointRequest,
)

router = APIRouter(prefix="/v1", tags=["endpoints"])

ERRORS = {400: {"description": "invalid request"}, 404: {"description": "no such endpoint, model or adapter"},
          409: {"description": "the adapter is bound elsewhere, or not bound"}}


@router.get("/hardware", response_model=HardwareList)
async def list_hardware(model: str | None = None) -> HardwareList:
    """Hardware this host can run endpoints on: ``cpu`` always, and the GPUs ``nvidia-smi`` reports."""
    return service.hardware()


@router.post("/endpoints", response_model=Endpoint,
             responses={**ERRORS, 422: {"description": "engine fields that do not fit together, or an engine "
                                                       "this server cannot run"}})
async def create_endpoint(
    body: CreateEndpointRequest, request: Request, workspace: CallerWorkspace, access: AccessDep
) -> Endpoint:
    settings, supervisor = request.app.state.settings, request.app.state.supervisor
    await run_in_threadpool(service.check_engine, settings, body)
    available = {h.id for h in (await run_in_threadpool(service.hardware)).data}
    row = await in_db(request.app.state.db, lambda s: service.create(s, settings, workspace, body, access, available),
                      write=True)
    supervisor.changed()
    return service.to_wire(row, supervisor)


@router.get("/endpoints", response_model=EndpointList)
async def list_endpoints(
    request: Request, workspace: CallerWorkspace,
    type: Literal["dedicated", "serverless"] | None = None, mine: bool | None = None,
    usage_type: Annotated[str | None, Query(description="accepted for Together compatibility; ignored")] = None,
) -> EndpointList:
    rows = await in_db(request.app.state.db, lambda s: service.list_(s, workspace, mine=mine, type_=type))
    return service.wire_list(rows, request.app.state.supervisor)


@router.get("/endpoints/{endpoint_id}", response_model=Endpoint, responses=ERRORS)
async def get_endpoint(endpoint_id: str, request: Request, workspace: CallerWorkspace) -> Endpoint:
    row = await in_db(request.app.state.db, lambda s: service.get(s, workspace, endpoint_id))
    return service.to_wire(row, request.app.state.supervisor)


@router.patch("/endpoints/{endpoint_id}", response_model=Endpoint, responses=ERRORS)
async def update_endpoint(
    endpoint_id: str, body: UpdateEndpointRequest, request: Request, workspace: CallerWorkspace
) -> Endpoint:
    row = await in_db(request.app.state.db, lambda s: service.update(s, workspace, endpoint_id, body), write=True)
    request.app.state.supervisor.changed()
    return service.to_wire(row, request.app.state.supervisor)


@router.delete("/endpoints/{endpoint_id}", status_code=204, responses=ERRORS)
async def delete_endpoint(endpoint_id: str, request: Request, workspace: CallerWorkspace) -> Response:
    """Delete the endpoint, detaching its adapters and stopping its replicas before answering."""
    await in_db(request.app.state.db, lambda s: service.delete(s, workspace, endpoint_id), write=True)
    await request.app.state.supervisor.forget(endpoint_id)
    request.app.state.supervisor.changed()
    return Response(status_code=204)


@router.post("/endpoints/{endpoint_id}/adapters", response_model=AdapterModelId, responses=ERRORS)
async def attach_adapter(
    endpoint_id: str, body: AdapterModelId, request: Request, workspace: CallerWorkspace
) -> AdapterModelId:
    """Attach an adapter (``model_id`` = ``<endpoint_name>:<adapter_name>``); it is loaded into every
    running replica before this answers."""
    state = request.app.state
    with state.metrics.timed("attach"):
        model_id = await service.attach(state.db, state.supervisor, workspace, endpoint_id, body.model_id)
    return AdapterModelId(model_id=model_id)


@router.get("/endpoints/{endpoint_id}/adapters", response_model=AttachedAdapterList, responses=ERRORS)
async def list_adapters(endpoint_id: str, request: Request, workspace: CallerWorkspace) -> AttachedAdapterList:
    return await in_db(request.app.state.db, lambda s: service.attached(s, workspace, endpoint_id))


@router.delete("/endpoints/{endpoint_id}/adapters", response_model=AdapterRemoved, responses=ERRORS)
async def detach_adapter(
    endpoint_id: str, body: AdapterModelId, request: Request, workspace: CallerWorkspace
) -> AdapterRemoved:
    state = request.app.state
    with state.metrics.timed("detach"):
        return await service.detach(state.db, state.supervisor, workspace, endpoint_id, body.model_id)


@router.get(
    "/endpoints/{endpoint_id}/logs", response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "log lines"},
               404: {"description": "no such endpoint, or no log for that replica"}},
)
async def endpoint_logs(
    endpoint_id: str, request: Request, workspace: CallerWorkspace,
    tail: Annotated[int, Query(ge=0, le=10_000, description="how many of the last lines")] = 100,
    replica: Annotated[int | None, Query(ge=1, description="the replica's number (default: the newest)")] = None,
    offset: Annotated[int | None, Query(ge=0, description="read after this byte (X-Modelyard-Log-Offset "
                                                          "of the previous answer), to follow a log")] = None,
) -> PlainTextResponse:
    """The last lines of an engine replica's log, as text: by default the newest running replica's, or
    the log written last when none runs. ``X-Modelyard-Replica`` names the replica (absent while the
    endpoint has no log), ``X-Modelyard-Replicas`` lists every replica with a log, and
    ``X-Modelyard-Log-Offset`` is the ``offset`` that reads what is written next."""
    state = request.app.state
    await in_db(state.db, lambda s: service.get(s, workspace, endpoint_id))
    logs = await anyio.to_thread.run_sync(lambda: service.replica_logs(
        state.settings, state.supervisor, endpoint_id, tail=tail, replica=replica, offset=offset,
    ))
    headers = {"X-Modelyard-Replicas": ",".join(str(n) for n in logs.replicas),
               "X-Modelyard-Log-Offset": str(logs.offset), "Cache-Control": "no-store"}
    if logs.replica is not None:
        headers["X-Modelyard-Replica"] = str(logs.replica)
    return PlainTextResponse(logs.text, headers=headers)
