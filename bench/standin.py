"""An OpenAI-compatible stand-in backend for the gateway benches: a minimal raw-ASGI responder.

``POST /v1/chat/completions`` answers at once with one short choice, the request's ``model`` and a
``usage`` block (streamed as three chunks and ``[DONE]`` when asked); ``GET /v1/models`` lists the
model. It costs next to nothing, so what a gateway in front of it adds is the gateway's own cost.

    python bench/standin.py --port 9000
"""

from __future__ import annotations

import argparse
import time

import orjson

MODEL = "standin-model"


def _completion(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    })


def _stream(model: str) -> bytes:
    base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}},
    ]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})  # lifespan.startup / lifespan.shutdown
                if kind == "lifespan.shutdown":
                    return
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/models"):
        payload, kind = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}), b"application/json"
    else:
        request = orjson.loads(body) if body else {}
        model = request.get("model") or MODEL
        if request.get("stream"):
            payload, kind = _stream(model), b"text/event-stream"
        else:
            payload, kind = _completion(model), b"application/json"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")
