"""Calling an upstream whose ``backend_format`` is ``ANTHROPIC_MESSAGES``: the OpenAI chat request is
translated to Anthropic's Messages API (:mod:`modelyard.gateway.anthropic`), sent to ``/v1/messages``,
and the answer (JSON or the SSE stream) translated back, with ``model`` the name the client used.

The provider's extras apply to the request as the upstream sees it (after translation). Without an
``auth_header_format`` the key goes as Anthropic's ``x-api-key`` header; ``anthropic-version`` is
sent unless the provider's headers set it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from modelyard.errors import ApiError
from modelyard.gateway import anthropic
from modelyard.gateway.upstream import UpstreamRoute, _open, _unreachable, join

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_AUTH = "x-api-key: {{ auth_secret }}"


async def call(request: Request, route: UpstreamRoute, path: str, body: dict[str, Any], requested: str) -> Response:
    if path != "/v1/chat/completions":
        raise ApiError(400, f"model '{requested}' is served in Anthropic's Messages format, which takes chat "
                            "completions only (POST /v1/chat/completions)", code="unsupported_endpoint")
    translated = anthropic.openai_to_anthropic_request(body, model=route.served_model)
    payload = {**route.default_body, **translated, **route.required_body, "model": route.served_model}
    if route.auth_format is None:
        route = dataclasses.replace(route, auth_format=DEFAULT_AUTH)
    headers = route.headers(request.headers)
    if not any(name.lower() == "anthropic-version" for name in headers):
        headers["anthropic-version"] = ANTHROPIC_VERSION
    upstream = await _open(request, route, "POST", join(route.base_url, "/v1/messages"), json_body=payload,
                           headers=headers)
    if upstream.status_code == 200 and upstream.headers.get("content-type", "").startswith("text/event-stream"):
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        stream = anthropic.AnthropicToOpenAIStream(requested, include_usage=bool(options.get("include_usage")))
        return StreamingResponse(_relay(upstream, route, stream), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        content = await upstream.aread()
    except httpx.HTTPError as exc:
        raise _unreachable(route, exc) from None
    finally:
        await upstream.aclose()
    if upstream.status_code >= 400:
        return JSONResponse(anthropic.anthropic_error_to_openai(content, upstream.status_code),
                            status_code=upstream.status_code)
    try:
        message = json.loads(content)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise ApiError(502, f"{route.label} did not answer an Anthropic message", code="provider_bad_response",
                       kind="api_error")
    return JSONResponse(anthropic.anthropic_to_openai_response(message, model=requested))


async def _relay(upstream: httpx.Response, route: UpstreamRoute,
                 stream: anthropic.AnthropicToOpenAIStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            for out in stream.feed(chunk):
                yield out
    except httpx.HTTPError as exc:
        if not stream.done:
            stream.done = True
            yield anthropic.sse_data(_unreachable(route, exc).body())
            yield anthropic.sse_data("[DONE]")
    finally:
        await upstream.aclose()
    for out in stream.close():
        yield out
