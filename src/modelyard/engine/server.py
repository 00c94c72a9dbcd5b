"""The engine's HTTP face: the OpenAI API plus vLLM's runtime LoRA routes.

``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
with ``stream: true`` as server-sent events), ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``: the same protocol ``vllm serve --enable-lora`` speaks, so the
gateway talks to every engine the same way. Errors are ``{"error": {message, type, code}}``.

A replica whose owning server vanished keeps serving until another server adopts it; with an
``orphan_timeout`` it stops itself once no owner has asked for ``/health`` (with the
:data:`OWNER_HEADER`) for that long, so a replica nobody adopts does not run forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modelyard.engine.core import Engine, Generation, SamplingParams, UnknownAdapter
from modelyard.engine.lora import AdapterError
from modelyard.engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

OWNER_HEADER = "X-Modelyard-Owner"
"""Sent by the owning server's supervisor on its ``GET /health`` checks; only these count as an owner
being there (a load balancer's plain health checks do not)."""


class ParameterError(ValueError):
    """A request parameter the engine cannot honour: a 400 naming it, never a silent no-op."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# Accepted and without effect on the output by definition (metadata for the caller's own records).
_NO_OP_FIELDS = {"user", "metadata", "store", "service_tier", "stream_options"}
# Known OpenAI/vLLM parameters this engine does not implement: refused with a 400 that names them.
_UNSUPPORTED = {
    "logprobs": "logprobs are not supported by the built-in engine (run the endpoint on vLLM for them)",
    "top_logprobs": "logprobs are not supported by the built-in engine (run the endpoint on vLLM for them)",
    "prompt_logprobs": "logprobs are not supported by the built-in engine (run the endpoint on vLLM for them)",
    "tools": "tool calling is not supported by the built-in engine",
    "tool_choice": "tool calling is not supported by the built-in engine",
    "functions": "function calling is not supported by the built-in engine",
    "function_call": "function calling is not supported by the built-in engine",
    "echo": "echo is not supported by the built-in engine",
    "suffix": "suffix is not supported by the built-in engine",
    "guided_json": "guided decoding is not supported by the built-in engine",
    "guided_regex": "guided decoding is not supported by the built-in engine",
    "guided_choice": "guided decoding is not supported by the built-in engine",
    "structured_outputs": "structured outputs are not supported by the built-in engine",
}


def _is_off(name: str, value: Any) -> bool:
    """Values that ask for nothing (``logprobs: false``, ``tools: []``, ``tool_choice: "none"``)."""
    return value is None or value is False or value == [] or value == "none" or (name == "top_logprobs" and value == 0)


class _Sampling(BaseModel):
    """The sampling parameters of the OpenAI API (and vLLM's ``top_k``/``repetition_penalty``).
    Every parameter is either honoured or refused with a 400 naming it; unset ones fall back to the
    checkpoint's ``generation_config.json`` defaults, as vLLM does."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=16)
    best_of: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def check(self, vocab_size: int) -> None:
        """Refuse what the engine would otherwise ignore."""
        for name, value in (self.model_extra or {}).items():
            if name in _NO_OP_FIELDS:
                continue
            if name in _UNSUPPORTED:
                if _is_off(name, value):
                    continue
                raise ParameterError(name, f"{name}: {_UNSUPPORTED[name]}")
            raise ParameterError(name, f"{name}: unsupported parameter (the built-in engine does not implement it)")
        if self.best_of is not None and self.best_of != self.n:
            raise ParameterError("best_of", "best_of: only best_of equal to n is supported by the built-in engine")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise ParameterError("response_format", f"response_format: type '{kind}' is not supported by the "
                                 "built-in engine (only 'text'; run the endpoint on vLLM for structured output)")
        for key, bias in (self.logit_bias or {}).items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
                raise ParameterError("logit_bias", f"logit_bias: '{key}' is not a token id of this model "
                                     f"(0 to {vocab_size - 1})")
            if not -100 <= bias <= 100:
                raise ParameterError("logit_bias", f"logit_bias: the bias for token {key} must be within -100..100")

    def params(self, defaults: dict[str, Any], max_tokens: int, seed_offset: int = 0) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        temperature = self.temperature if self.temperature is not None else defaults.get("temperature", 1.0)
        top_k = self.top_k if self.top_k is not None else defaults.get("top_k", 0)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(self.top_p if self.top_p is not None else defaults.get("top_p", 1.0)),
            top_k=max(int(top_k or 0), 0),
            stop=[s for s in stop if s],
            seed=None if self.seed is None else self.seed + seed_offset,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=float(self.repetition_penalty if self.repetition_penalty is not None
                                     else defaults.get("repetition_penalty", 1.0)),
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
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


def error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    """OpenAI's error shape: ``code`` is a string or null, never the status number."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class _EchoRequestId:
    """The gateway's ``X-Request-ID`` comes back on the answer, so both sides' logs name one id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rid = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None) \
            if scope["type"] == "http" else None
        if rid is None:
            await self.app(scope, receive, send)
            return

        async def echo(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, echo)


class _OrphanWatch:
    """Calls ``on_orphan`` once when no owner's health check arrived for ``timeout`` seconds (counted
    from the app's start, so a new replica has that long to be adopted by its first check)."""

    def __init__(self, timeout: float, on_orphan: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_orphan = on_orphan
        self.last_seen = time.monotonic()
        self.owner: str | None = None

    def seen(self, owner: str) -> None:
        self.last_seen = time.monotonic()
        self.owner = owner

    async def run(self) -> None:
        tick = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(tick)
            quiet = time.monotonic() - self.last_seen
            if quiet >= self.timeout:
                log.warning("no owner's health check for %.1fs (orphan timeout %.1fs; last owner: %s); "
                            "stopping", quiet, self.timeout, self.owner or "none")
                self.on_orphan()
                return


def create_engine_app(
    engine: Engine, *, orphan_timeout: float | None = None, on_orphan: Callable[[], None] | None = None,
) -> FastAPI:
    """The engine's app. With ``orphan_timeout`` (seconds), ``on_orphan`` is called (once) when no
    ``GET /health`` carrying the :data:`OWNER_HEADER` arrived for that long; the caller makes it stop
    the server (``python -m modelyard.engine`` ends uvicorn as on SIGTERM)."""
    watch: _OrphanWatch | None = None
    if orphan_timeout is not None:
        if orphan_timeout <= 0:
            raise ValueError("orphan_timeout must be positive")
        if on_orphan is None:
            raise ValueError("orphan_timeout needs on_orphan, which stops the server")
        watch = _OrphanWatch(orphan_timeout, on_orphan)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if watch is None:
            yield
            return
        watch.last_seen = time.monotonic()
        task = asyncio.create_task(watch.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="Modelyard engine", docs_url="/docs", lifespan=lifespan)
    app.state.engine = engine
    app.state.orphan_watch = watch
    metrics = EngineMetrics(engine)

    app.add_middleware(_EchoRequestId)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        return error(400, f"{where}: {first['msg']}" if where else first["msg"], code="invalid_request",
                     param=where or None)

    @app.get("/health")
    def health(request: Request) -> PlainTextResponse:
        owner = request.headers.get(OWNER_HEADER)
        if watch is not None and owner:
            watch.seen(owner)
        return PlainTextResponse("", status_code=200)

    @app.get("/metrics")
    def prometheus() -> Response:
        """vLLM's metric names for what this engine has (see :mod:`modelyard.engine.metrics`)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
            return error(400, str(exc), code="invalid_adapter")
        except UnknownAdapter:  # unloaded while the new weights were read
            return error(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError",
                         code="adapter_not_found")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: UnloadLoraRequest) -> Any:
        try:
            await run_in_threadpool(engine.unload_adapter, body.lora_name)
        except UnknownAdapter:
            return error(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError",
                         code="adapter_not_found")
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
        try:
            body.check(engine.vocab_size)
        except ParameterError as exc:
            return error(400, str(exc), code="unsupported_parameter", param=exc.param)
        room = engine.max_context - len(prompt_ids)
        if room < 1:
            return error(400, f"This model's maximum context length is {engine.max_context} tokens; the prompt "
                              f"has {len(prompt_ids)}. Shorten the prompt.", code="context_length_exceeded",
                         param="messages" if chat else "prompt")
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > room:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            return error(400, f"This model's maximum context length is {engine.max_context} tokens; you asked "
                              f"for {len(prompt_ids)} prompt + {asked} completion tokens. Lower {param} to at "
                              f"most {room}.", code="context_length_exceeded", param=param)
        # as in vLLM: a chat answer may use the rest of the context, a completion 16 tokens
        max_tokens = asked or (room if chat else min(16, room))
        defaults = getattr(engine, "generation_defaults", {})
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, tuple[str, Any]]] = asyncio.Queue()

        def emitter(index: int) -> Any:
            timer = metrics.timer(len(prompt_ids))

            def emit(ev: tuple[str, Any]) -> None:  # on the engine thread: the times are the engine's
                timer.mark(ev[0])
                if ev[0] == "done":
                    timer.finish(gens[index].completion_tokens, ev[1])
                loop.call_soon_threadsafe(events.put_nowait, (index, ev))
            return emit

        gens = [Generation(prompt_ids, adapter, body.params(defaults, max_tokens, i), emitter(i))
                for i in range(body.n)]
        try:
            for gen in gens:
                engine.submit(gen)
        except UnknownAdapter:
            return error(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model_not_found")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())

        def usage() -> dict[str, Any]:
            completion = sum(g.completion_tokens for g in gens)
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                    "total_tokens": len(prompt_ids) + completion,
                    "prompt_tokens_details": {"cached_tokens": max(g.cached for g in gens)}}

        if body.stream:
            return StreamingResponse(
                _stream(events, len(gens), rid, created, body, chat, usage), media_type="text/event-stream"
            )
        texts, reasons = [""] * len(gens), [None] * len(gens)
        pending = len(gens)
        while pending:
            index, (kind, value) = await events.get()
            if kind == "text":
                texts[index] += value
            elif kind == "error":
                return error(500, value, "InternalServerError", "engine_error")
            else:
                reasons[index] = value
                pending -= 1
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": body.model, "choices": choices, "usage": usage()}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        ids = body.prompt if isinstance(body.prompt, list) else engine.tokenizer(body.prompt)["input_ids"]
        if not ids:
            return error(400, "prompt is empty", code="invalid_request", param="prompt")
        return await _run(body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        if not engine.tokenizer.chat_template:
            return error(400, f"model '{engine.served_name}' has no chat template; use /v1/completions instead",
                         code="no_chat_template")
        messages = [{"role": m.role, "content": _text_of(m.content)} for m in body.messages]
        try:
            prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - the template rejected these messages
            return error(400, f"the chat template could not render these messages: {exc}",
                         code="invalid_request", param="messages")
        ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return await _run(body, ids, chat=True)

    return app


async def _stream(
    events: asyncio.Queue[tuple[int, tuple[str, Any]]], n: int, rid: str, created: int, body: _Sampling,
    chat: bool, usage: Any,
) -> AsyncIterator[bytes]:
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, delta: str | None, reason: str | None, first: bool = False) -> bytes:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
            choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": delta or "", "logprobs": None, "finish_reason": reason}
        payload = {"id": rid, "object": kind_name, "created": created, "model": body.model, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n".encode()

    if chat:
        for index in range(n):
            yield chunk(index, None, None, first=True)
    pending = n
    while pending:
        index, (kind, value) = await events.get()
        if kind == "text":
            yield chunk(index, value, None)
        elif kind == "error":
            problem = {"error": {"message": value, "type": "InternalServerError", "param": None, "code": "engine_error"}}
            yield f"data: {json.dumps(problem)}\n\n".encode()
            break
        else:
            yield chunk(index, None, value)
            pending -= 1
    if (body.stream_options or {}).get("include_usage"):
        payload = {"id": rid, "object": kind_name, "created": created, "model": body.model, "choices": [],
                   "usage": usage()}
        yield f"data: {json.dumps(payload)}\n\n".encode()
    yield b"data: [DONE]\n\n"
