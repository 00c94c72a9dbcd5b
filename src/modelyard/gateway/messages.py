"""Anthropic's Messages API served inbound: ``POST /v1/messages``, routed by ``model`` like chat
completions, so Anthropic's own SDK can call any model or adapter the gateway serves.

The request is translated to an OpenAI chat request (:mod:`modelyard.gateway.anthropic`), sent down
the gateway's one proxy path (:func:`modelyard.gateway.router.proxy_chat`), and the answer — or the
stream, event by event as it arrives — translated back. Errors have Anthropic's shape
``{"type": "error", "error": {"type", "message"}}`` with the status the gateway chose.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from modelyard.auth.deps import CallerWorkspace
from modelyard.errors import ApiError
from modelyard.gateway.anthropic import (
    OpenAIToAnthropicStream,
    anthropic_error,
    anthropic_to_openai_request,
    openai_error_to_anthropic,
    openai_to_anthropic_response,
)
from modelyard.gateway.router import proxy_chat

router = APIRouter(tags=["inference"])


def _error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse(anthropic_error(status, message), status_code=status, headers=headers)


@router.post("/v1/messages", summary="Anthropic Messages API, routed by model name")
async def messages(request: Request, workspace: CallerWorkspace) -> Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _error(400, "'model': Field required (an adapter name, `endpoint_name:adapter_name` or an "
                           "endpoint name)")
    model: str = body["model"]
    stops = body.get("stop_sequences") or []
    try:
        chat = anthropic_to_openai_request(body)
        answer = await proxy_chat(request, workspace, chat)
    except ApiError as exc:
        return _error(exc.status_code, exc.message, exc.retry_after)
    if isinstance(answer, StreamingResponse):
        if answer.status_code >= 400:
            content = b"".join([part async for part in _bytes(answer.body_iterator)])
            return JSONResponse(openai_error_to_anthropic(content, answer.status_code), status_code=answer.status_code)
        return StreamingResponse(_translate(answer.body_iterator, model, stops), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    if answer.status_code >= 400:
        return JSONResponse(openai_error_to_anthropic(bytes(answer.body), answer.status_code),
                            status_code=answer.status_code)
    try:
        completion = json.loads(answer.body)
    except ValueError:
        return _error(502, "the model answered something other than JSON")
    if not isinstance(completion, dict):
        return _error(502, "the model answered something other than a chat completion")
    return JSONResponse(openai_to_anthropic_response(completion, model=model, stop_sequences=stops))


async def _bytes(iterator: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for part in iterator:
        yield part if isinstance(part, bytes) else str(part).encode()


async def _translate(upstream: AsyncIterator[Any], model: str, stops: list[str]) -> AsyncIterator[bytes]:
    """The gateway's OpenAI event stream as Anthropic's, as it arrives. The gateway's relay already
    ends a cut stream with an error event, which becomes Anthropic's ``error`` event here."""
    stream = OpenAIToAnthropicStream(model, stop_sequences=stops)
    try:
        async for part in _bytes(upstream):
            for event in stream.feed(part):
                yield event
        for event in stream.close():
            yield event
    finally:
        close = getattr(upstream, "aclose", None)
        if close is not None:
            await close()
