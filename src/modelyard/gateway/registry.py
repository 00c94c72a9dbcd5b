"""The gateway's registry path and the reference's model and provider routes.

``call_registry`` is what ``/v1/chat/completions``, ``/v1/completions`` and ``/openai/-/v1/...`` fall
back to when no endpoint or adapter of ours serves the ``model``: a registry model with an
``api_endpoint`` or ``model_providers`` (or a model a provider serves). Under the prefix
``/apis/inference-gateway/v2/workspaces/{workspace}``:

* ``/model/{name}/-/{path}``: the model from the path (the body needs no ``model``), routed like
  ``/openai/-/v1/...``;
* ``/provider/{name}/-/{path}``: straight to the provider's ``host_url``, body unchanged;
* ``/provider/{name}/ready``: ``{ready, provider, host_url}``.

A provider that stands for one of our endpoints (``host_url`` ``modelyard://endpoints/<id>``) is served
by the endpoint's replicas: the same routing path as a request for the endpoint or its adapters.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from modelyard.db.session import in_db
from modelyard.errors import ApiError
from modelyard.gateway import upstream
from modelyard.observability.metrics import GatewayCall

router = APIRouter(tags=["inference"])
PREFIX = "/apis/inference-gateway/v2/workspaces/{workspace}"
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def call_registry(request: Request, workspace: str, path: str, body: dict[str, Any],
                        model: str | None = None) -> Response:
    """Send ``body`` to the upstream the registry describes for ``model`` (default ``body['model']``; a
    virtual model's target otherwise); 404 (``model_not_found``) when it describes none the caller can use.
    The answer names ``body['model']``."""
    requested = body["model"]
    route = await upstream.lookup(request, workspace, model or requested)
    if route is None:
        raise upstream.not_found(model or requested)
    if route.endpoint_id is not None:  # one of our endpoints is its provider: the endpoint path serves it
        from modelyard.gateway import router as gateway

        owner = route.workspaces[-1]  # the provider's workspace: the endpoint's
        return await gateway.proxy(request, owner, path, {**body, "model": route.served_model},
                                   answer_as=requested, prompt=route.prompt)
    state = request.app.state
    owner = route.workspaces[0] if route.workspaces else workspace
    call = GatewayCall(state.metrics, state.usage, owner, "", None, route.model_entity or model or requested,
                       caller=workspace)
    request.state.gateway = call
    try:
        return await upstream.call(request, route, path, body, requested, call)
    except ApiError as exc:
        call.finish(exc.status_code)
        raise


async def listed(request: Request, workspace: str) -> list[tuple[str, str]]:
    """``(id, owner)`` of the registry models callable in ``workspace`` (for ``/v1/models``)."""
    rows = await in_db(request.app.state.db, lambda s: upstream.callable_models(s, workspace))
    return [(model_id, owner) for model_id, owner in rows if request.state.access.can(owner)]


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


@router.post(PREFIX + "/model/{name}/-/{trailing_uri:path}", summary="Model inference proxy (model from the path)")
async def model_proxy(workspace: str, name: str, trailing_uri: str, request: Request) -> Response:
    """``POST .../model/{name}/-/v1/chat/completions`` and the like: the body's ``model`` is set to ``name``
    (``name`` or ``ws/name``; URL-encode the ``/``), then routed as the OpenAI routes route it."""
    from modelyard.gateway import (
        router as gateway,  # the OpenAI routes' proxy (endpoints first, then registry)
    )

    body = await _json_body(request)
    body["model"] = name
    return await gateway.proxy(request, workspace, "/" + trailing_uri.lstrip("/"), body)


async def _provider(request: Request, workspace: str, name: str, *, with_key: bool = True) -> upstream.UpstreamRoute:
    state = request.app.state
    route = await in_db(state.db, lambda s: upstream.provider_route(s, state.keyring, workspace, name,
                                                                    with_key=with_key))
    if route is None:
        raise ApiError(404, f"Model provider '{workspace}/{name}' not found", code="provider_not_found")
    return route


async def provider_proxy(workspace: str, name: str, trailing_uri: str, request: Request) -> Response:
    """The request goes to the provider's ``host_url`` + ``/{trailing_uri}`` as it came (method, query,
    body), with the provider's extra headers and key; the answer comes back as the provider sent it."""
    route = await _provider(request, workspace, name)
    if route.endpoint_id is not None:
        from modelyard.gateway import router as gateway

        return await gateway.forward_to_endpoint(request, route.endpoint_id, "/" + trailing_uri.lstrip("/"))
    return await upstream.forward(request, route, "/" + trailing_uri.lstrip("/"))


for _method in _METHODS:  # one operation per method (distinct operation ids in the OpenAPI)
    router.add_api_route(PREFIX + "/provider/{name}/-/{trailing_uri:path}", provider_proxy, methods=[_method],
                         name=f"provider_proxy_{_method.lower()}", operation_id=f"provider_proxy_{_method.lower()}",
                         summary=f"Provider inference proxy {_method} (straight to host_url)")


@router.get(PREFIX + "/provider/{name}/ready", summary="Whether the gateway can route to a provider")
async def provider_ready(workspace: str, name: str, request: Request) -> dict[str, Any]:
    """Known to the gateway: ``{ready: true, provider, host_url}``; 404 otherwise. Nothing is sent to the provider."""
    route = await _provider(request, workspace, name, with_key=False)
    if route.endpoint_id is not None:  # one of our endpoints: ready while a replica of it is live
        pool = request.app.state.supervisor.pools.get(route.endpoint_id)
        return {"ready": bool(pool and pool.live), "provider": f"{workspace}/{name}", "host_url": route.base_url}
    return {"ready": True, "provider": f"{workspace}/{name}", "host_url": route.base_url}
