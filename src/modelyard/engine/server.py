"""The engine's HTTP face: the OpenAI API plus vLLM's runtime LoRA routes.

``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
with ``stream: true`` as server-sent events), ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``: the same protocol ``vllm serve --enable-lora`` speaks, so the
gateway talks to every engine the same way. Errors are ``{"error": {message, type, code}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modelyard.engine.core import Engine, Generation, SamplingParams, UnknownAdapter
from modelyard.engine.lora import AdapterError


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore (n=1, user, ...)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or 16,
            temperature=self.temperature, top_p=self.top_p, stop=stop, seed=self.seed,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class LoadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code or status}}, status_code=status)


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def create_engine_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="Modelyard engine", docs_url="/docs")
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        return error(400, f"{where}: {first['msg']}" if where else first["msg"])

    @app.get("/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("", status_code=200)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": engine.served_name, "object": "model", "created": created, "owned_by": "modelyard",
                 "root": engine.model_path, "parent": None, "max_model_len": engine.max_context}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "modelyard",
                  "root": path, "parent": engine.served_name} for name, path in sorted(engine.adapters.items())]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load(body: LoadLoraRequest) -> Any:
        replace = body.load_inplace and body.lora_name in engine.adapters
        try:
            if replace:
                await run_in_threadpool(engine.replace_adapter, body.lora_name, body.lora_path)
            else:
                await run_in_threadpool(engine.load_adapter, body.lora_name, body.lora_path)
        except AdapterError as exc:
            return error(400, str(exc))
        except UnknownAdapter:  # unloaded while the new weights were read
            return error(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: UnloadLoraRequest) -> Any:
        try:
            await run_in_threadpool(engine.unload_adapter, body.lora_name)
        except UnknownAdapter:
            return error(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def _adapter_for(model: str) -> str | None | JSONResponse:
        if model in (engine.served_name, engine.model_path):
            return None
        if model in engine.adapters:
            return model
        return error(404, f"The model `{model}` does not exist.", "NotFoundError", "model_not_found")

    async def _run(body: _Sampling, prompt_ids: list[int], chat: bool) -> Any:
        adapter = _adapter_for(body.model)
        if isinstance(adapter, JSONResponse):
            return adapter
        if len(prompt_ids) >= engine.max_context:
            return error(400, f"prompt is {len(prompt_ids)} tokens; this model's context is {engine.max_context}")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        gen = Generation(prompt_ids, adapter, body.params(), lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        try:
            engine.submit(gen)
        except UnknownAdapter:
            return error(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model_not_found")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())

        def usage() -> dict[str, int]:
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": gen.completion_tokens,
                    "total_tokens": len(prompt_ids) + gen.completion_tokens}

        if body.stream:
            return StreamingResponse(
                _stream(events, gen, rid, created, body, chat, usage), media_type="text/event-stream"
            )
        text, reason = "", None
        while True:
            kind, value = await events.get()
            if kind == "text":
                text += value
            elif kind == "error":
                return error(500, value, "InternalServerError")
            else:
                reason = value
                break
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": body.model, "choices": [choice], "usage": usage()}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        ids = body.prompt if isinstance(body.prompt, list) else engine.tokenizer(body.prompt)["input_ids"]
        if not ids:
            return error(400, "prompt is empty")
        return await _run(body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        if not engine.tokenizer.chat_template:
            return error(400, f"model '{engine.served_name}' has no chat template; use /v1/completions instead")
        messages = [{"role": m.role, "content": _text_of(m.content)} for m in body.messages]
        try:
            prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - the template rejected these messages
            return error(400, f"the chat template could not render these messages: {exc}")
        ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return await _run(body, ids, chat=True)

    return app


async def _stream(
    events: asyncio.Queue[tuple[str, Any]], gen: Generation, rid: str, created: int, body: _Sampling,
    chat: bool, usage: Any,
) -> AsyncIterator[bytes]:
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, first: bool = False) -> bytes:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        payload = {"id": rid, "object": kind_name, "created": created, "model": body.model, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n".encode()

    if chat:
        yield chunk(None, None, first=True)
    while True:
        kind, value = await events.get()
        if kind == "text":
            yield chunk(value, None)
        elif kind == "error":
            yield f"data: {json.dumps({'error': {'message': value, 'type': 'InternalServerError', 'code': 500}})}\n\n".encode()
            break
        else:
            yield chunk(None, value)
            break
    if (body.stream_options or {}).get("include_usage"):
        payload = {"id": rid, "object": kind_name, "created": created, "model": body.model, "choices": [],
                   "usage": usage()}
        yield f"data: {json.dumps(payload)}\n\n".encode()
    yield b"data: [DONE]\n\n"
