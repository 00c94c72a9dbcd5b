"""A small OpenAI-compatible stand-in upstream (raw ASGI under uvicorn in a thread) that records every
request it gets: method, path, query, headers and JSON body."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.conftest import free_port


class Recorder:
    def __init__(self, models: tuple[str, ...] = ("up-model",)) -> None:
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self.status = 200  # what chat/completions answer (a 4xx to test pass-through)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"method": scope["method"], "path": scope["path"],
                              "query": scope["query_string"].decode(), "headers": headers, "body": body})
        path = scope["path"]
        if path == "/v1/models":
            await self._json(send, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        elif path in ("/v1/chat/completions", "/v1/completions") and self.status != 200:
            await self._json(send, self.status, {"error": {"message": "upstream refused: bad things", "type": "invalid_request_error",
                                                           "code": "upstream_says_no"}})
        elif path == "/v1/chat/completions" and isinstance(body, dict) and body.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for word in ("hel", "lo"):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "model": body.get("model"),
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        elif path == "/v1/chat/completions":
            await self._json(send, 200, {
                "id": "c1", "object": "chat.completion", "created": 0, "model": (body or {}).get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        elif path == "/v1/messages" and isinstance(body, dict) and body.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            events = [
                {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                      "model": body.get("model"), "content": [],
                                                      "usage": {"input_tokens": 3, "output_tokens": 0}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hel"}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
                {"type": "message_stop"},
            ]
            for event in events:
                data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/v1/messages":
            await self._json(send, 200, {
                "id": "msg_1", "type": "message", "role": "assistant", "model": (body or {}).get("model"),
                "content": [{"type": "text", "text": "hello"}], "stop_reason": "max_tokens",
                "usage": {"input_tokens": 3, "output_tokens": 2}})
        elif path == "/v1/completions":
            await self._json(send, 200, {
                "id": "c2", "object": "text_completion", "created": 0, "model": (body or {}).get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", "text": "hi", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        else:
            await self._json(send, 404, {"detail": f"no route {path}"})

    @staticmethod
    async def _json(send: Any, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"x-upstream", b"recorder")]})
        await send({"type": "http.response.body", "body": data})

    def last(self, path: str) -> dict[str, Any]:
        return [r for r in self.requests if r["path"] == path][-1]


@contextmanager
def recording_upstream(models: tuple[str, ...] = ("up-model",)) -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder(models)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("recording upstream did not start")
        time.sleep(0.02)
    try:
        yield recorder, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
