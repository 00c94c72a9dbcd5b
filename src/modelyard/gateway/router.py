"""The OpenAI-compatible gateway: route each request by ``model`` to an endpoint replica and adapter.

Served at ``/v1/...`` (caller's workspace from ``X-Modelyard-Workspace``) and under the reference's
prefix ``/apis/inference-gateway/v2/workspaces/{ws}/openai/-/v1/...``. The request takes a lease
on a replica from the endpoint's pool (where its adapter lives, unless that one is much busier);
server-sent events are passed on line by line as they arrive (never buffered), with ``model``
rewritten to what the client asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from modelyard.auth.deps import CallerWorkspace
from modelyard.boundary import PARSED
from modelyard.db.session import in_db
from modelyard.endpoints.pool import Lease, NoReplica, Replica
from modelyard.endpoints.supervisor import Supervisor
from modelyard.errors import ApiError
from modelyard.gateway import cache as caches
from modelyard.gateway import http1, virtual
from modelyard.gateway import pool as gateway_pool
from modelyard.gateway.prompt import apply as apply_prompt
from modelyard.gateway.registry import call_registry
from modelyard.gateway.registry import listed as registry_models
from modelyard.gateway.resolver import Target, callable_models, not_found, resolve
from modelyard.gateway.sse import EventWatch, error_event
from modelyard.observability.metrics import GatewayCall

log = logging.getLogger("modelyard.gateway")
router = APIRouter(tags=["inference"])
PREFIX = "/apis/inference-gateway/v2/workspaces/{workspace}/openai/-"
RETRY_AFTER_S = 5
_USAGE_IN_STREAM = ("/v1/chat/completions", "/v1/completions")
_UNPARSED = object()


async def _body(request: Request) -> dict[str, Any]:
    parsed = request.scope.get("state", {}).get(PARSED, _UNPARSED)  # the boundary parsed it already
    if parsed is not _UNPARSED:
        return _checked(parsed)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json") from None
    return _checked(body)


def _checked(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "'model' is required: an adapter name, `endpoint_name:adapter_name` or an "
                            "endpoint name", code="missing_model")
    return body


_CACHE_TTL_S = 1.0


async def _resolve(request: Request, supervisor: Supervisor, workspace: str, model: str) -> Target:
    """Resolve through a small cache: valid while nothing changed in this server (``generation``) and
    for at most a second, so changes made by another server process are seen promptly too."""
    names = caches.of(request.app.state, "endpoint_names", _CACHE_TTL_S)
    db = request.app.state.db
    # a name that is not ours (404) is remembered too: a registry model's name comes here on every call
    target = await names.get((supervisor.generation, workspace, model),
                             lambda: in_db(db, lambda s: resolve(s, workspace, model)), remember=ApiError)
    return _readable(request, target, model)


def _readable(request: Request, target: Target, model: str) -> Target:
    """A public endpoint of another workspace is callable only by those who can read that workspace."""
    if not request.state.access.can(target.workspace):
        raise not_found(model)
    return target


async def _proxy(request: Request, workspace: str, path: str) -> Response:
    return await proxy(request, workspace, path, await _body(request))


async def proxy_chat(request: Request, workspace: str, body: dict[str, Any]) -> Response:
    """Send an OpenAI chat-completion ``body`` (already parsed, e.g. translated from another API)
    through the gateway, exactly as ``POST /v1/chat/completions`` would."""
    return await proxy(request, workspace, "/v1/chat/completions", body)


_KEEP: Any = object()


async def proxy(request: Request, workspace: str, path: str, body: dict[str, Any], *,
                answer_as: str | None = None, prompt: Any = _KEEP) -> Response:
    """Route ``body`` by its ``model`` to a replica's ``path``; the answer (JSON, an error in OpenAI's
    shape, or an SSE stream relayed as it arrives) with ``model`` set to the name the client used
    (``answer_as`` when a registry model was asked for and one of our endpoints serves it, with that
    model's ``prompt``)."""
    body = _checked(body)
    requested = model = body["model"]
    supervisor: Supervisor = request.app.state.supervisor
    if answer_as is None and (named := await virtual.lookup(request, workspace, requested)) is not None:
        workspace, model = named.workspace, named.pick()  # a virtual model: one of its targets, by weight
    try:
        target = await _resolve(request, supervisor, workspace, model)
    except ApiError as exc:  # not one of our endpoints or adapters: what the registry describes, if anything
        if exc.code != "model_not_found" or answer_as is not None:
            raise
        return await call_registry(request, workspace, path, body, model)
    if answer_as is not None:
        requested = answer_as
        if prompt is not _KEEP:
            target = dataclasses.replace(target, prompt=prompt)
    state = request.app.state
    call = GatewayCall(state.metrics, state.usage, target.workspace, target.endpoint_name, target.endpoint_id,
                       target.engine_model, caller=workspace)
    request.state.gateway = call  # the access log line names the endpoint, model, replica and tokens
    try:
        return await _forward(request, supervisor, target, path, body, requested, call)
    except ApiError as exc:
        call.finish(exc.status_code)
        raise
    except asyncio.CancelledError:
        call.finish(499, "cancelled")
        raise
    except Exception:
        call.finish(500, "engine_error")
        raise


async def _forward(request: Request, supervisor: Supervisor, target: Target, path: str, body: dict[str, Any],
                   requested: str, call: GatewayCall) -> Response:
    if target.state != "STARTED":
        raise _not_serving(target)
    pool = supervisor.pool(target.endpoint_id)
    adapter = target.engine_model if target.engine_model != target.endpoint_name else None
    wait = supervisor.settings.engine_start_timeout if target.scales_to_zero else 0.0
    lease = pool.lease(adapter, wait=wait)
    try:
        await lease.__aenter__()
    except NoReplica:
        raise _not_serving(target) from None
    try:
        if pool.in_flight > supervisor.settings.replica_target_in_flight * max(len(pool.replicas), 1):
            supervisor.wake()  # time to scale out
        if target.prompt is not None:  # the registry model's system prompt and inference parameters
            body = apply_prompt(body, target.prompt)
        sent = {**body, "model": target.engine_model}
        client_usage = True
        if body.get("stream") is True and path in _USAGE_IN_STREAM:  # count a stream's tokens too
            options = body.get("stream_options")
            client_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not client_usage:
                sent["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        rid = request.scope.get("state", {}).get("request_id")
        headers = {"X-Request-ID": rid} if rid is not None else None
        upstream = await _send(supervisor, lease, path, sent, headers, base_model=adapter is None,
                               client=gateway_pool.of(request.app.state).client())
        assert lease.replica is not None
        call.replica = lease.replica.url
        is_stream = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if is_stream:
            lease.keep()  # released by the relay when the stream ends
            return StreamingResponse(_relay(upstream, lease, requested, call, client_usage),
                                     status_code=upstream.status,
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            content = await upstream.read()
        except gateway_pool.ERRORS as exc:
            supervisor.wake()
            raise ApiError(503, f"the engine replica stopped while answering: {gateway_pool.cause(exc)}",
                           code="engine_unavailable", kind="service_unavailable",
                           retry_after=RETRY_AFTER_S) from None
    finally:
        await lease.__aexit__(None, None, None)
    if upstream.status == 200:
        try:
            payload = orjson.loads(content)
            payload["model"] = requested
        except (ValueError, TypeError):
            pass
        else:
            call.tokens(payload.get("usage"))
            call.finish(200)
            return Response(orjson.dumps(payload), media_type="application/json")
    call.finish(upstream.status)
    if upstream.status >= 400:
        return Response(_openai_error(content, upstream.status), status_code=upstream.status,
                        media_type="application/json")
    return Response(content, status_code=upstream.status,
                    media_type=upstream.headers.get("content-type", "application/json"))


async def forward_to_endpoint(request: Request, endpoint_id: str, path: str) -> Response:
    """The request as it came (method, query, body) to one live replica of the endpoint, and the
    engine's answer as it comes (the ``/provider/{name}/-/...`` route for a provider that stands for
    one of our endpoints)."""
    supervisor: Supervisor = request.app.state.supervisor
    lease = supervisor.pool(endpoint_id).lease()
    try:
        await lease.__aenter__()
    except NoReplica:
        raise ApiError(503, f"endpoint {endpoint_id} has no live replica now; retry shortly",
                       code="endpoint_not_ready", kind="service_unavailable", retry_after=RETRY_AFTER_S) from None
    try:
        assert lease.replica is not None
        http = lease.replica.client.http
        url = lease.replica.url + path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        built = http.build_request(request.method, url, content=await request.body(), headers=headers)
        try:
            upstream = await http.send(built, stream=True)
        except httpx.HTTPError as exc:
            supervisor.wake()
            raise ApiError(503, f"engine replica at {lease.replica.url} is unreachable ({exc!r}); retry shortly",
                           code="engine_unavailable", kind="service_unavailable",
                           retry_after=RETRY_AFTER_S) from None
    except BaseException:
        lease.release()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            lease.release()

    return StreamingResponse(body(), status_code=upstream.status_code,
                             media_type=upstream.headers.get("content-type", "application/json"))


def _retryable(exc: BaseException) -> bool:
    """True when the engine cannot have started on the request: no connection, or the connection was
    closed before any byte of an answer (a read timeout may mean it is still generating)."""
    return isinstance(exc, http1.ConnectError) or (isinstance(exc, http1.RemoteProtocolError) and not exc.answered)


async def _open(client: http1.Http1Pool, replica: Replica, path: str, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> http1.Response:
    """Send the request to one replica and hand back the response unread (the caller reads or closes it)."""
    sent = [("Content-Type", "application/json"), *(headers or {}).items()]
    return await client.request("POST", replica.client.base_url + path, sent, orjson.dumps(body))


async def _send(supervisor: Supervisor, lease: Lease, path: str, body: dict[str, Any],
                headers: dict[str, str] | None = None, *, base_model: bool = False,
                client: http1.Http1Pool) -> http1.Response:
    """Send to the leased replica; if it dies before answering anything (connection refused or closed
    before the response started), switch the lease to another live replica of the endpoint and send
    once more. A request for the base model goes out under the name that replica serves it by."""
    while True:
        replica = lease.replica
        assert replica is not None
        served = replica.handle.served_name if base_model else None
        try:
            return await _open(client, replica, path, {**body, "model": served} if served else body, headers)
        except gateway_pool.ERRORS as exc:
            supervisor.wake()  # the replica may have died; let the supervisor look
            first = not lease.tried
            cause = gateway_pool.cause(exc)
            log.warning("replica did not answer", extra={"url": replica.url, "error": cause,
                                                         "retry": _retryable(exc) and first})
            if not _retryable(exc) or not first or lease.switch() is None:
                reason = ("no other replica is live to retry on" if _retryable(exc) and first
                          else "the retry failed too" if not first else "it stopped answering")
                raise ApiError(503, f"engine replica at {replica.url} is unreachable ({cause}); "
                                    f"{reason}; retry shortly", code="engine_unavailable",
                               kind="service_unavailable", retry_after=RETRY_AFTER_S) from None


def _not_serving(target: Target) -> ApiError:
    """Why an endpoint cannot answer now. Only a state that ends by itself (starting, restarting a
    replica) says "retry" with ``Retry-After``; a stopped or failed endpoint says what to do instead."""
    name, state = target.endpoint_name, target.state
    if state == "STOPPED":
        return ApiError(503, f"endpoint '{name}' is STOPPED and will not start by itself; start it with "
                             f"`modelyard endpoints start {target.endpoint_id}` (or PATCH /v1/endpoints/"
                             f"{target.endpoint_id} with state STARTED)", code="endpoint_stopped",
                        kind="service_unavailable")
    if state == "ERROR":
        return ApiError(503, f"endpoint '{name}' is in ERROR and cannot serve requests; see "
                             f"`modelyard endpoints get {target.endpoint_id}` for the cause and "
                             "`modelyard endpoints logs` for its replica logs, then start it again",
                        code="endpoint_failed", kind="service_unavailable")
    return ApiError(503, f"endpoint '{name}' is {state} and cannot serve requests yet; retry shortly",
                    code="endpoint_not_ready", kind="service_unavailable", retry_after=RETRY_AFTER_S)


# OpenAI's error ``code`` is a string or null; engines such as vLLM send the HTTP status number.
_CODE_BY_STATUS = {400: "invalid_request", 404: "model_not_found", 413: "request_too_large",
                   422: "invalid_request", 429: "rate_limited", 500: "engine_error", 503: "engine_unavailable"}


def _openai_error(content: bytes, status: int) -> bytes:
    """An engine's error body in OpenAI's shape: ``{"error": {message, type, param, code}}`` with a
    string (or null) ``code``."""
    try:
        payload = json.loads(content)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        message = content.decode("utf-8", "replace").strip() or f"the engine answered {status}"
        error = {"message": message, "type": "invalid_request_error" if status < 500 else "engine_error"}
    code = error.get("code")
    return json.dumps({"error": {
        "message": str(error.get("message", "")), "type": error.get("type"), "param": error.get("param"),
        "code": code if isinstance(code, str) else _CODE_BY_STATUS.get(status),
    }}).encode()


async def _relay(upstream: http1.Response, lease: Lease, model: str, call: GatewayCall | None = None,
                 client_usage: bool = True) -> AsyncIterator[bytes]:
    """Pass the engine's events on (:class:`~modelyard.gateway.sse.EventWatch`'s rules); if the engine
    goes away mid-stream (or the stream ends without ``[DONE]``), end with an error event in OpenAI's
    shape and ``[DONE]`` so the client knows the answer is incomplete (a bare cut looks like a short
    answer). The usage chunk (asked of the engine for every stream, to count its tokens) is passed on
    only when the client asked for it too (``stream_options.include_usage``)."""
    watch = EventWatch(model, call, pass_usage=client_usage, status=upstream.status)
    problem: str | None = None
    outcome = "cancelled"  # unless the loop ends: the client went away mid-stream
    try:
        async for line in upstream.lines():
            passed = watch.line(line)
            if watch.done:  # free before the client sees [DONE] (the call is counted then too)
                lease.release()
            if passed is not None:
                yield passed
        if not watch.done and upstream.status == 200:
            problem = "the engine replica ended the stream without [DONE]"
        outcome = "engine_error" if problem else None
    except gateway_pool.ERRORS as exc:
        if not watch.done:
            problem = f"the engine replica stopped while streaming: {gateway_pool.cause(exc)}"
            outcome = "engine_error"
        else:
            outcome = None
    finally:
        upstream.close()  # nothing after a complete stream: its connection went back to the pool
        lease.release()
        if call is not None:
            call.finish(upstream.status, outcome)
    if problem is not None:
        yield error_event({"error": {"message": problem, "type": "engine_error", "param": None,
                                     "code": "engine_unavailable"}})


async def _models(request: Request, workspace: str) -> dict[str, Any]:
    created = int(time.time())
    rows = await in_db(request.app.state.db, lambda s: callable_models(s, workspace, request.state.access))
    rows += [(model_id, None, owner) for model_id, owner in await registry_models(request, workspace)]
    listed = {model_id for model_id, _, _ in rows}
    rows += [(model_id, None, owner) for model_id, owner in await virtual.listed(request, workspace)
             if model_id not in listed]
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": owner, "parent": parent}
        for model_id, parent, owner in rows
    ]}


# The two hot routes take no FastAPI dependency (solving one costs more than the rest of the route):
# the workspace is what the authentication middleware resolved, the header only documented here.
_WORKSPACE_HEADER = {"parameters": [{
    "name": "X-Modelyard-Workspace", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "the workspace to act in; default: the access key's default workspace, else 'default'",
}]}


def _caller(request: Request) -> str:
    return request.scope.get("state", {}).get("workspace") or "default"


async def proxy_request(request: Request, path: str) -> Response:
    """``POST /v1/chat/completions`` or ``/v1/completions`` (called by :mod:`modelyard.gateway.fast` too)."""
    return await _proxy(request, _caller(request), path)


@router.post("/v1/chat/completions", summary="Chat completion, routed by model name", openapi_extra=_WORKSPACE_HEADER)
async def chat_completions(request: Request) -> Response:
    return await proxy_request(request, "/v1/chat/completions")


@router.post("/v1/completions", summary="Text completion, routed by model name", openapi_extra=_WORKSPACE_HEADER)
async def completions(request: Request) -> Response:
    return await proxy_request(request, "/v1/completions")


@router.get("/v1/models", summary="What the caller can send requests to: endpoints and attached adapters")
async def models(request: Request, workspace: CallerWorkspace) -> dict[str, Any]:
    return await _models(request, workspace)


@router.post(PREFIX + "/v1/chat/completions", summary="Chat completion (inference-gateway path)")
async def gateway_chat_completions(workspace: str, request: Request) -> Response:
    return await _proxy(request, workspace, "/v1/chat/completions")


@router.post(PREFIX + "/v1/completions", summary="Text completion (inference-gateway path)")
async def gateway_completions(workspace: str, request: Request) -> Response:
    return await _proxy(request, workspace, "/v1/completions")


@router.get(PREFIX + "/v1/models", summary="Models callable in the workspace (inference-gateway path)")
async def gateway_models(workspace: str, request: Request) -> dict[str, Any]:
    return await _models(request, workspace)
