"""Calls to upstreams the registry describes: a model's ``api_endpoint`` or its ``model_providers``.

:func:`resolve` turns a request's ``model`` (``name`` or ``ws/name``) into an :class:`UpstreamRoute`:
where to send it, the name the upstream knows the model by, the headers and body extras of its
provider, the key (read from the model's encrypted ``api_endpoint.api_key`` or the provider's
workspace secret) and the model's ``prompt``. :func:`call` sends an OpenAI request there through one
pooled client and answers with ``model`` set to what the client asked for; :func:`forward` sends a
request unchanged (the ``/provider/{name}/-/...`` route).

A provider that does not answer is a 502 naming it and the cause, never the key; an upstream error
status is passed on with its body.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.auth.crypto import Keyring
from modelyard.db import tables
from modelyard.db.session import in_db
from modelyard.errors import ApiError
from modelyard.gateway import cache as caches
from modelyard.gateway import http1, pool
from modelyard.gateway import prompt as prompts
from modelyard.gateway.sse import EventWatch, error_event, with_model
from modelyard.observability.metrics import GatewayCall
from modelyard.providers import auth_header
from modelyard.providers.service import ProviderKeyError, api_key, endpoint_of
from modelyard.secrets.service import api_key_of

log = logging.getLogger("modelyard.gateway")
_CACHE_TTL_S = 1.0
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding", "host"})


@dataclass(frozen=True)
class UpstreamRoute:
    label: str
    """What to call it in errors: ``provider 'ws/name'`` or ``the api_endpoint of model 'ws/name'``."""
    base_url: str
    served_model: str
    workspaces: tuple[str, ...]
    """Workspaces the caller must be able to read (the model's, and its provider's)."""
    key: str | None = field(default=None, repr=False)
    auth_format: str | None = None
    default_headers: dict[str, str] = field(default_factory=dict)
    required_headers: dict[str, str] = field(default_factory=dict)
    default_body: dict[str, Any] = field(default_factory=dict)
    required_body: dict[str, Any] = field(default_factory=dict)
    backend_format: str = "OPENAI_CHAT"
    prompt: dict[str, Any] | None = None
    model_entity: str | None = None
    """``ws/name`` of the registry model (None for a provider called directly)."""
    endpoint_id: str | None = None
    """Set when the provider is one of our endpoints: the gateway routes through its replicas."""

    def headers(self, client_headers: Any = None) -> dict[str, str]:
        """Default extras (a client header of the same name wins), then required extras, then the key."""
        out = dict(self.default_headers)
        if client_headers is not None:
            for name in list(out):
                if name.lower() in client_headers:
                    out[name] = client_headers[name.lower()]
        out.update(self.required_headers)
        if self.key:
            name, value = auth_header.render(self.auth_format, self.key)
            out = {k: v for k, v in out.items() if k.lower() != name.lower()}
            out[name] = value
        return out

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**self.default_body, **body, **self.required_body, "model": self.served_model}


def join(base: str, path: str) -> str:
    """``base`` + ``path``, where ``base`` may already end in ``/v1`` (an OpenAI-style base URL)."""
    base = base.rstrip("/")
    if base.endswith("/v1") and (path.startswith("/v1/") or path == "/v1"):
        base = base[:-3]
    return base + path


def not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist.", code="model_not_found")


# --- resolution ------------------------------------------------------------------------------------

def _provider_route(session: Session, keyring: Keyring, row: tables.ModelProvider, served: str,
                    extra: Iterable[str] = (), **kw: Any) -> UpstreamRoute:
    if (endpoint_id := endpoint_of(row)) is not None:  # ours: no key, no extras; its replicas serve it
        return UpstreamRoute(label=f"provider '{row.workspace}/{row.name}'", base_url=row.host_url,
                             served_model=served, workspaces=tuple(dict.fromkeys((*extra, row.workspace))),
                             endpoint_id=endpoint_id, **kw)
    try:
        key = api_key(session, keyring, row)
    except ProviderKeyError as exc:
        raise ApiError(502, f"provider '{row.workspace}/{row.name}' cannot be called: {exc}",
                       code="provider_unavailable", kind="api_error") from None
    return UpstreamRoute(
        label=f"provider '{row.workspace}/{row.name}'", base_url=row.host_url, served_model=served,
        workspaces=tuple(dict.fromkeys((*extra, row.workspace))), key=key, auth_format=row.auth_header_format,
        default_headers=dict(row.default_extra_headers or {}), required_headers=dict(row.required_extra_headers or {}),
        default_body=dict(row.default_extra_body or {}), required_body=dict(row.required_extra_body or {}), **kw,
    )


def provider_route(session: Session, keyring: Keyring, workspace: str, name: str, *,
                   with_key: bool = True) -> UpstreamRoute | None:
    row = session.scalar(select(tables.ModelProvider).where(
        tables.ModelProvider.workspace == workspace, tables.ModelProvider.name == name))
    if row is None:
        return None
    if not with_key:
        return UpstreamRoute(label=f"provider '{workspace}/{name}'", base_url=row.host_url, served_model="",
                             workspaces=(workspace,), endpoint_id=endpoint_of(row))
    return _provider_route(session, keyring, row, "")


def _served_name(provider: tables.ModelProvider, entity: str, fallback: str) -> str:
    for mapping in provider.served_models or []:
        if mapping.get("model_entity_id") == entity:
            return mapping.get("served_model_name") or fallback
    return fallback


def _model_route(session: Session, keyring: Keyring, model: tables.Model) -> UpstreamRoute | None:
    entity = f"{model.workspace}/{model.name}"
    endpoint = model.api_endpoint or {}
    fallback = endpoint.get("model_id") or model.name
    common = {"backend_format": model.backend_format or "OPENAI_CHAT", "prompt": model.prompt, "model_entity": entity}
    if model.model_providers:
        candidates = []
        for ref in model.model_providers:
            ws, _, name = ref.rpartition("/")
            row = session.scalar(select(tables.ModelProvider).where(
                tables.ModelProvider.workspace == (ws or model.workspace), tables.ModelProvider.name == name))
            if row is not None:
                candidates.append(row)
        if candidates:  # the first that is not known to be failing
            row = next((c for c in candidates if c.status != "ERROR"), candidates[0])
            return _provider_route(session, keyring, row, _served_name(row, entity, fallback),
                                   extra=(model.workspace,), **common)
    if endpoint.get("url"):
        return UpstreamRoute(
            label=f"the api_endpoint of model '{entity}' ({endpoint['url']})", base_url=endpoint["url"],
            served_model=fallback, workspaces=(model.workspace,), key=api_key_of(keyring, endpoint), **common,
        )
    return None


def resolve(session: Session, keyring: Keyring, workspace: str, model: str) -> UpstreamRoute | None:
    """The registry's route for ``model`` (``name`` or ``ws/name``) asked in ``workspace``; None when
    the registry describes no upstream for it."""
    candidates = [(workspace, model)]
    if "/" in model:
        ws, _, name = model.partition("/")
        candidates.insert(0, (ws, name))
    for ws, name in candidates:
        row = session.scalar(select(tables.Model).where(tables.Model.workspace == ws, tables.Model.name == name))
        if row is not None:
            route = _model_route(session, keyring, row)
            if route is not None:
                return route
    for ws, name in candidates:  # a model a provider serves that has no entity of its own
        entity = f"{ws}/{name}"
        for row in session.scalars(select(tables.ModelProvider).where(tables.ModelProvider.workspace == ws)
                                   .order_by(tables.ModelProvider.created_at)):
            for mapping in row.served_models or []:
                if mapping.get("model_entity_id") == entity:
                    return _provider_route(session, keyring, row, mapping["served_model_name"], model_entity=entity)
    return None


def callable_models(session: Session, workspace: str) -> list[tuple[str, str]]:
    """``(id, owner)`` of the registry models callable in ``workspace``: with an api_endpoint URL or
    providers, and what its providers serve; ids are ``ws/name``."""
    out: dict[str, str] = {}
    rows = session.scalars(select(tables.Model).where(tables.Model.workspace == workspace)
                           .order_by(tables.Model.created_at)).all()
    for row in rows:
        if row.model_providers or (row.api_endpoint or {}).get("url"):
            out[f"{row.workspace}/{row.name}"] = row.workspace
    for provider in session.scalars(select(tables.ModelProvider).where(tables.ModelProvider.workspace == workspace)
                                    .order_by(tables.ModelProvider.created_at)):
        if endpoint_of(provider) is not None:
            continue  # what our endpoints serve is listed under the endpoints' own names
        for mapping in provider.served_models or []:
            out.setdefault(mapping["model_entity_id"], provider.workspace)
    return list(out.items())


async def lookup(request: Request, workspace: str, model: str) -> UpstreamRoute | None:
    """:func:`resolve` through a one-second cache (per server), checked against what the caller may read."""
    state = request.app.state
    routes = caches.of(state, "registry_routes", _CACHE_TTL_S)
    route = await routes.get((workspace, model), lambda: in_db(state.db, lambda s: resolve(s, state.keyring, workspace,
                                                                                          model)))
    if route is not None and not all(request.state.access.can(ws) for ws in route.workspaces):
        return None
    return route


# --- calling ---------------------------------------------------------------------------------------

def http_client(state: Any) -> httpx.AsyncClient:
    """The server's one pooled client for upstream calls (closed when the server stops)."""
    client = getattr(state, "upstream_http", None)
    if client is None:
        client = state.upstream_http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0),
            # idle connections dropped before a typical server's keep-alive timeout (5 s): no request is
            # sent on a connection the provider is closing
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=2.0),
            follow_redirects=False, trust_env=False,
        )
    return client


def _unreachable(route: UpstreamRoute, exc: BaseException) -> ApiError:
    cause = pool.cause(exc) if isinstance(exc, pool.ERRORS) and not isinstance(exc, httpx.HTTPError) \
        else f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if route.key:
        cause = cause.replace(route.key, "***")
    return ApiError(502, f"{route.label} at {route.base_url} did not answer: {cause}", code="provider_unavailable",
                    kind="api_error")


async def _open(request: Request, route: UpstreamRoute, method: str, url: str, *, content: bytes | None = None,
                json_body: Any = None, headers: dict[str, str]) -> httpx.Response:
    http = http_client(request.app.state)
    try:
        built = http.build_request(method, url, content=content, json=json_body, headers=headers)
        return await http.send(built, stream=True)
    except httpx.HTTPError as exc:
        log.warning("upstream did not answer", extra={"upstream": route.label, "error": type(exc).__name__})
        raise _unreachable(route, exc) from None
    except auth_header.AuthHeaderError as exc:
        raise ApiError(502, f"{route.label}: {exc}", code="provider_misconfigured", kind="api_error") from None


async def _relay(upstream: httpx.Response, route: UpstreamRoute, model: str | None) -> AsyncIterator[bytes]:
    try:
        if model is None:
            async for chunk in upstream.aiter_raw():
                yield chunk
            return
        watch = EventWatch(model)
        async for line in upstream.aiter_lines():
            yield watch.line((line + "\n").encode()) or b""
    except httpx.HTTPError as exc:
        yield error_event(_unreachable(route, exc).body())
    finally:
        await upstream.aclose()


def _passed_headers(upstream: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"}


async def _answer(upstream: httpx.Response, route: UpstreamRoute, model: str | None) -> Response:
    media = upstream.headers.get("content-type", "application/json")
    if media.startswith("text/event-stream"):
        return StreamingResponse(_relay(upstream, route, model), status_code=upstream.status_code,
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        content = await upstream.aread()
    except httpx.HTTPError as exc:
        raise _unreachable(route, exc) from None
    finally:
        await upstream.aclose()
    if model is not None and upstream.status_code == 200:
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if "model" in payload:
                payload["model"] = model
            return JSONResponse(payload)
    return Response(content, status_code=upstream.status_code, media_type=media,
                    headers=_passed_headers(upstream) if model is None else None)


async def call(request: Request, route: UpstreamRoute, path: str, body: dict[str, Any], requested: str,
               call: GatewayCall | None = None) -> Response:
    """Send the OpenAI request ``body`` for ``requested`` to the route's upstream ``path`` (through the
    gateway's pooled HTTP/1.1 client: this is the hot path), counting it in ``call`` when given."""
    body = prompts.apply(body, route.prompt)  # a template that fails is a PromptError (400)
    if route.backend_format == "ANTHROPIC_MESSAGES":
        from modelyard.gateway import anthropic_upstream

        return await anthropic_upstream.call(request, route, path, body, requested)
    try:
        headers = route.headers(request.headers)
    except auth_header.AuthHeaderError as exc:
        raise ApiError(502, f"{route.label}: {exc}", code="provider_misconfigured", kind="api_error") from None
    headers["Content-Type"] = "application/json"
    rid = request.scope.get("state", {}).get("request_id")
    if rid is not None:
        headers.setdefault("X-Request-ID", rid)
    try:
        upstream = await pool.of(request.app.state).client().request(
            "POST", join(route.base_url, path), headers.items(), orjson.dumps(route.body(body)))
    except pool.ERRORS as exc:
        log.warning("upstream did not answer", extra={"upstream": route.label, "error": type(exc).__name__})
        raise _unreachable(route, exc) from None
    media = upstream.headers.get("content-type", "application/json")
    if media.startswith("text/event-stream"):
        return StreamingResponse(_relay_pooled(upstream, route, requested, call), status_code=upstream.status,
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        content = await upstream.read()
    except pool.ERRORS as exc:
        raise _unreachable(route, exc) from None
    if upstream.status == 200:
        rewritten = with_model(content, requested)
        if rewritten is not None:
            if call is not None and b'"usage"' in content:
                with contextlib.suppress(ValueError):
                    call.tokens(orjson.loads(content).get("usage"))
            if call is not None:
                call.finish(200)
            return Response(rewritten, media_type="application/json")
    if call is not None:
        call.finish(upstream.status)
    return Response(content, status_code=upstream.status, media_type=media)


async def _relay_pooled(upstream: http1.Response, route: UpstreamRoute, model: str,
                        call: GatewayCall | None) -> AsyncIterator[bytes]:
    """An upstream's event stream, line by line as it arrives, ``model`` rewritten; a cut ends with an
    error event and ``[DONE]``. The connection goes back to the pool only after a complete stream."""
    outcome: str | None = "cancelled"
    watch = EventWatch(model, call, status=upstream.status)
    try:
        async for line in upstream.lines():
            passed = watch.line(line)
            if passed is not None:
                yield passed
        outcome = None
    except pool.ERRORS + (ValueError,) as exc:
        outcome = "engine_error"
        yield error_event(_unreachable(route, exc).body())
    finally:
        upstream.close()  # a no-op after a complete stream (the connection is back in the pool)
        if call is not None:
            call.finish(upstream.status, outcome)


async def forward(request: Request, route: UpstreamRoute, path: str) -> Response:
    """``request`` sent on to the provider unchanged (method, body, query), with the provider's extras
    and key; the answer passed back as it is."""
    url = join(route.base_url, path)
    if request.url.query:
        url += "?" + request.url.query
    headers = route.headers(request.headers)
    for name in ("content-type", "accept"):
        if name in request.headers and not any(h.lower() == name for h in headers):
            headers[name] = request.headers[name]
    content = await request.body()
    upstream = await _open(request, route, request.method, url, content=content or None, headers=headers)
    return await _answer(upstream, route, None)
