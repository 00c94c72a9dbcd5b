"""Anthropic's Messages API ⇄ OpenAI's chat completions, both ways, as pure functions (no I/O).

Outbound (an OpenAI client calls a model whose ``backend_format`` is ``ANTHROPIC_MESSAGES``):

* :func:`openai_to_anthropic_request` — the chat request as a Messages request;
* :func:`anthropic_to_openai_response` — the Messages answer as a ``chat.completion``;
* :class:`AnthropicToOpenAIStream` — Anthropic's SSE events as ``chat.completion.chunk`` lines and
  ``data: [DONE]``.

Inbound (Anthropic's SDK calls ``POST /v1/messages`` on us):

* :func:`anthropic_to_openai_request` — the Messages request as a chat request;
* :func:`openai_to_anthropic_response` — a ``chat.completion`` as a Messages answer;
* :class:`OpenAIToAnthropicStream` — OpenAI chunks as Anthropic's SSE events (``event:`` lines,
  content block indices, ``message_delta`` with ``stop_reason`` and usage, ``message_stop``).

What one side cannot express raises :class:`TranslationError` (a 400 naming the field) rather than
being dropped silently. Fields that change nothing about the answer (``user``, ``metadata``,
``service_tier``, ``seed``, ...) are carried where the other side has a place for them and dropped
otherwise.

:class:`SseLines` splits a byte stream into SSE ``(event, data)`` pairs for either stream translator.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from modelyard.errors import ApiError

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent to Anthropic when the OpenAI request gives neither ``max_tokens`` nor
``max_completion_tokens`` (Anthropic requires it; OpenAI's default is "up to the context")."""

ANTHROPIC_MAX_TEMPERATURE = 1.0


class TranslationError(ApiError):
    """A request the other API cannot express: a 400 whose ``param`` names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, f"'{field}': {message}", code="unsupported_parameter", param=field)
        self.field = field


# ------------------------------------------------------------------------------------------------
# Shared mappings

_FINISH_BY_STOP_REASON = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
_STOP_REASON_BY_FINISH = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic's error ``type`` for an HTTP status (and the reverse, for errors met mid-stream).
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
    504: "timeout_error", 529: "overloaded_error",
}


def finish_reason_of(stop_reason: str | None) -> str | None:
    """Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""
    if stop_reason is None:
        return None
    return _FINISH_BY_STOP_REASON.get(stop_reason, "stop")


def stop_reason_of(finish_reason: str | None, matched_stop: Any = None,
                   stop_sequences: Iterable[str] = ()) -> tuple[str | None, str | None]:
    """OpenAI ``finish_reason`` → Anthropic ``(stop_reason, stop_sequence)``. A ``stop`` caused by one of
    the request's stop strings (vLLM and our engine report it as the choice's ``stop_reason``) is
    ``stop_sequence``."""
    if finish_reason is None:
        return None, None
    if finish_reason == "stop" and isinstance(matched_stop, str) and matched_stop in set(stop_sequences):
        return "stop_sequence", matched_stop
    return _STOP_REASON_BY_FINISH.get(finish_reason, "end_turn"), None


def anthropic_error_type(status: int) -> str:
    if status in _ERROR_TYPE_BY_STATUS:
        return _ERROR_TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def openai_error_to_anthropic(content: bytes | dict[str, Any], status: int) -> dict[str, Any]:
    """An error body in OpenAI's shape (or anything else) as Anthropic's error body."""
    payload: Any = content
    if isinstance(content, bytes | bytearray):
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
    elif isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        message = payload["detail"]
    elif isinstance(content, bytes | bytearray):
        message = content.decode("utf-8", "replace").strip()
    else:
        message = ""
    return anthropic_error(status, message or f"the upstream answered {status}")


def anthropic_error_to_openai(content: bytes | dict[str, Any], status: int) -> dict[str, Any]:
    """An error body in Anthropic's shape as OpenAI's ``{"error": {message, type, param, code}}``."""
    payload: Any = content
    if isinstance(content, bytes | bytearray):
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message, kind = str(error.get("message") or ""), error.get("type")
    else:
        message = content.decode("utf-8", "replace").strip() if isinstance(content, bytes | bytearray) else ""
        kind = None
    return {"error": {"message": message or f"the upstream answered {status}",
                      "type": kind or ("invalid_request_error" if status < 500 else "api_error"),
                      "param": None, "code": kind}}


def _text_of_parts(parts: Any, field: str) -> str:
    """A string, or a list of text parts/blocks, as one string; anything else is refused."""
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise TranslationError(field, "must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise TranslationError(f"{field}[{i}]", f"only text parts can be translated here, not {kind!r}")
        texts.append(part["text"])
    return "".join(texts)


def _json_object(arguments: Any, field: str) -> dict[str, Any]:
    """OpenAI tool-call ``arguments`` (a JSON string) as Anthropic's tool ``input`` (an object)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        raise TranslationError(field, "must be a JSON object encoded as a string") from None
    if not isinstance(value, dict):
        raise TranslationError(field, "must encode a JSON object (Anthropic's tool input is an object)")
    return value


def _lenient_object(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments produced by a model (which may be malformed) as an object, never failing:
    what does not parse to an object is kept whole under ``arguments``."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else (arguments or {})
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------------------------------------
# Outbound: OpenAI chat request → Anthropic Messages request

# Accepted and without effect on the answer, or with no counterpart worth refusing a request over.
_OPENAI_IGNORED = {"seed", "store", "metadata", "service_tier", "stream_options", "prompt_cache_key",
                   "safety_identifier"}
# Refused unless they hold a value that asks for nothing.
_OPENAI_REFUSED = {
    "n": "Anthropic returns one choice per request; send n=1 (or several requests)",
    "logprobs": "Anthropic does not return log probabilities",
    "top_logprobs": "Anthropic does not return log probabilities",
    "logit_bias": "Anthropic has no logit bias",
    "presence_penalty": "Anthropic has no presence penalty",
    "frequency_penalty": "Anthropic has no frequency penalty",
    "response_format": "Anthropic has no response format; describe the format in the prompt or use a tool",
    "functions": "the legacy 'functions' parameter is not translated; use 'tools'",
    "function_call": "the legacy 'function_call' parameter is not translated; use 'tool_choice'",
    "modalities": "Anthropic answers with text only",
    "audio": "Anthropic answers with text only",
    "prediction": "Anthropic has no predicted outputs",
    "web_search_options": "web search options are not translated",
    "reasoning_effort": "reasoning effort is not translated to Anthropic's extended thinking",
    "verbosity": "Anthropic has no verbosity setting",
}
_OFF = {"n": (1,), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},), "presence_penalty": (0, 0.0),
        "frequency_penalty": (0, 0.0), "response_format": ({"type": "text"},), "modalities": (["text"],)}


def openai_to_anthropic_request(body: dict[str, Any], *, model: str | None = None,
                                default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """An OpenAI chat-completion request as an Anthropic Messages request (``model`` replaces the
    request's own when given: the upstream's name for it). Raises :class:`TranslationError`."""
    handled = {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
               "top_k", "stream", "tools", "tool_choice", "parallel_tool_calls", "user"}
    for key, value in body.items():
        if key in handled or key in _OPENAI_IGNORED or value is None:
            continue
        if key in _OPENAI_REFUSED:
            if value in _OFF.get(key, ()):
                continue
            raise TranslationError(key, _OPENAI_REFUSED[key])
        raise TranslationError(key, "has no counterpart in Anthropic's Messages API")

    out: dict[str, Any] = {"model": model or body.get("model")}
    system, messages = _openai_messages_to_anthropic(body.get("messages"))
    if system:
        out["system"] = system
    out["messages"] = messages

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TranslationError("max_tokens", "must be a positive integer")
    out["max_tokens"] = max_tokens

    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
            raise TranslationError("stop", "must be a string or a list of strings")
        if sequences:
            out["stop_sequences"] = sequences
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or temperature < 0:
            raise TranslationError("temperature", "must be a number ≥ 0")
        if temperature > ANTHROPIC_MAX_TEMPERATURE:
            raise TranslationError("temperature", f"{temperature} is above Anthropic's maximum of 1")
        out["temperature"] = temperature
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}

    tools = body.get("tools")
    if tools:
        out["tools"] = [_openai_tool_to_anthropic(tool, i) for i, tool in enumerate(tools)]
    choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (tools or choice):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _openai_tool_to_anthropic(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise TranslationError(f"tools[{i}].type", f"only function tools can be translated, not {kind!r}")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise TranslationError(f"tools[{i}].function", "must be an object with a 'name'")
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return out


def _openai_tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise TranslationError("tool_choice", "must be 'auto', 'none', 'required' or a function tool choice")


def _openai_messages_to_anthropic(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """System and developer messages (wherever they are) become ``system``, in order; tool results
    become ``tool_result`` blocks of a user turn; consecutive turns of one role are merged, with a
    user turn's tool results first (as Anthropic requires)."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages", "must be a non-empty list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(field, "must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_of_parts(message.get("content"), f"{field}.content"))
        elif role == "user":
            add("user", _openai_user_content(message.get("content"), f"{field}.content"))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            content = message.get("content")
            if isinstance(content, list):
                content = [p for p in content if not (isinstance(p, dict) and p.get("type") == "refusal")]
            text = _text_of_parts(content, f"{field}.content")
            if text:
                blocks.append({"type": "text", "text": text})
            for j, call in enumerate(message.get("tool_calls") or []):
                where = f"{field}.tool_calls[{j}]"
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise TranslationError(where, "must be a function call with a name")
                blocks.append({"type": "tool_use", "id": call.get("id") or f"toolu_{i}_{j}",
                               "name": function["name"],
                               "input": _json_object(function.get("arguments"), f"{where}.function.arguments")})
            if message.get("function_call") is not None:
                raise TranslationError(f"{field}.function_call", "the legacy 'function_call' is not translated; "
                                                                 "use 'tool_calls'")
            if blocks:
                add("assistant", blocks)
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise TranslationError(f"{field}.tool_call_id", "is required on a tool message")
            result = {"type": "tool_result", "tool_use_id": message["tool_call_id"],
                      "content": _text_of_parts(message.get("content"), f"{field}.content")}
            if turns and turns[-1]["role"] == "user":
                last = turns[-1]["content"]
                position = sum(1 for b in last if b.get("type") == "tool_result")
                last.insert(position, result)
            else:
                add("user", [result])
        else:
            raise TranslationError(f"{field}.role", f"{role!r} cannot be translated to Anthropic")
    return "\n\n".join(s for s in system if s), turns


def _openai_user_content(content: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TranslationError(field, "must be a string or a list of content parts")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            blocks.append({"type": "image", "source": _image_source(url, f"{field}[{i}].image_url.url")})
        else:
            raise TranslationError(f"{field}[{i}].type", f"content part {kind!r} cannot be translated to Anthropic")
    return blocks


def _image_source(url: str, field: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type, _, encoding = header[5:].partition(";")
        if encoding != "base64" or not data:
            raise TranslationError(field, "a data URL must be base64-encoded")
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise TranslationError(field, "must be an http(s) or base64 data URL")


# ------------------------------------------------------------------------------------------------
# Outbound: Anthropic Messages response → OpenAI chat completion

def _openai_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cached
    completion = usage.get("output_tokens") or 0
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def anthropic_to_openai_response(message: dict[str, Any], *, model: str | None = None,
                                 created: int | None = None) -> dict[str, Any]:
    """An Anthropic Messages answer as an OpenAI ``chat.completion`` (``model`` replaces the
    upstream's name when given: the one the client used). Thinking blocks are left out."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": _dumps(block.get("input") or {})}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model or message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason_of(message.get("stop_reason")) or "stop"}],
        "usage": _openai_usage(message.get("usage")),
    }


# ------------------------------------------------------------------------------------------------
# Server-sent events

class SseLines:
    """Split a byte stream into SSE events: :meth:`feed` bytes (cut anywhere), get ``(event, data)``
    pairs for each complete event (``event`` is ``None`` without an ``event:`` line; ``data`` is the
    joined ``data:`` lines as text)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [event for line in lines if (event := self._line(line.rstrip(b"\r").decode("utf-8"))) is not None]

    def close(self) -> list[tuple[str | None, str]]:
        """The last event when the stream ended without a blank line after it."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append((self._event, "\n".join(self._data)))
            self._event, self._data = None, []
        return events

    def _line(self, line: str) -> tuple[str | None, str] | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = (self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One Anthropic-style SSE event: an ``event:`` line, a ``data:`` line and a blank line."""
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def sse_data(data: dict[str, Any] | str) -> bytes:
    """One OpenAI-style SSE event: a ``data:`` line and a blank line."""
    return f"data: {data if isinstance(data, str) else _dumps(data)}\n\n".encode()


# ------------------------------------------------------------------------------------------------
# Outbound streaming: Anthropic events → OpenAI chunks

class AnthropicToOpenAIStream:
    """Anthropic's stream events as OpenAI ``chat.completion.chunk`` events.

    :meth:`event` takes one event (its ``type`` is read from the data, so the ``event:`` line is not
    needed) and returns the SSE bytes to send (possibly none); :meth:`feed` does the same for raw bytes
    of the upstream stream. After ``message_stop`` comes a usage chunk (when ``include_usage``) and
    ``data: [DONE]``; after an ``error`` event, the error in OpenAI's shape and ``[DONE]``. :meth:`close`
    ends a stream that stopped early with an error event and ``[DONE]``.
    """

    def __init__(self, model: str, *, include_usage: bool = False, created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.done = False
        self._sse = SseLines()
        self._tools: dict[int, int] = {}  # Anthropic content block index → OpenAI tool call index
        self._usage: dict[str, Any] = {}
        self._finish: str | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        for _, data in self._sse.feed(chunk):
            out.extend(self._data(data))
        return out

    def close(self) -> list[bytes]:
        """Whatever the stream still owes: any event left in the buffer, then, if it never finished,
        an error event and ``[DONE]`` (a cut stream must not look like a short answer)."""
        out: list[bytes] = []
        for _, data in self._sse.close():
            out.extend(self._data(data))
        if not self.done:
            self.done = True
            out.append(sse_data({"error": {"message": "the upstream ended the stream before message_stop",
                                           "type": "api_error", "param": None, "code": "upstream_incomplete"}}))
            out.append(sse_data("[DONE]"))
        return out

    def _data(self, data: str) -> list[bytes]:
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        return self.event(payload) if isinstance(payload, dict) else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_data({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                         "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                           "finish_reason": finish}]})

    def event(self, event: dict[str, Any]) -> list[bytes]:
        if self.done:
            return []
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if message.get("id"):
                self.id = message["id"]
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools[event.get("index", 0)] = len(self._tools)
                call = {"index": index, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}
                out = [self._chunk({"tool_calls": [call]})]
                if block.get("input"):  # a block that arrives whole
                    out.append(self._arguments(index, _dumps(block["input"])))
                return out
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})] if delta.get("text") else []
            if delta.get("type") == "input_json_delta" and event.get("index") in self._tools:
                return [self._arguments(self._tools[event["index"]], delta.get("partial_json", ""))]
            return []  # thinking, signatures, citations: no OpenAI counterpart
        if kind == "message_delta":
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            self._finish = finish_reason_of((event.get("delta") or {}).get("stop_reason"))
            return [self._chunk({}, self._finish or "stop")]
        if kind == "message_stop":
            self.done = True
            out = []
            if self.include_usage:
                out.append(sse_data({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                     "model": self.model, "choices": [], "usage": _openai_usage(self._usage)}))
            out.append(sse_data("[DONE]"))
            return out
        if kind == "error":
            self.done = True
            error = event.get("error") or {}
            return [sse_data({"error": {"message": error.get("message", "upstream error"),
                                        "type": error.get("type", "api_error"), "param": None,
                                        "code": error.get("type")}}), sse_data("[DONE]")]
        return []  # ping and anything newer

    def _arguments(self, index: int, text: str) -> bytes:
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})


# ------------------------------------------------------------------------------------------------
# Inbound: Anthropic Messages request → OpenAI chat request

# Routing, caching and account hints of Anthropic's platform: no effect on the answer here.
_ANTHROPIC_IGNORED = {"service_tier", "cache_control", "inference_geo", "speed", "diagnostics", "user_profile_id",
                      "workspace_id"}
_ANTHROPIC_REFUSED = {
    "container": "containers are not available on this server",
    "mcp_servers": "MCP servers are not available on this server",
    "context_management": "context management is not available on this server",
    "output_format": "structured output formats are not translated",
    "output_config": "output configuration is not translated",
}


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat-completion request. A streamed request asks for
    usage in the stream (``stream_options.include_usage``) so ``message_delta`` can report it. Raises
    :class:`TranslationError`."""
    if not isinstance(body, dict):
        raise TranslationError("body", "must be a JSON object")
    handled = {"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "top_k",
               "stream", "tools", "tool_choice", "metadata", "thinking"}
    for key, value in body.items():
        if key in handled or key in _ANTHROPIC_IGNORED or value is None:
            continue
        if key in _ANTHROPIC_REFUSED:
            raise TranslationError(key, _ANTHROPIC_REFUSED[key])
        raise TranslationError(key, "is not a parameter of the Messages API this server translates")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise TranslationError("max_tokens", "is required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TranslationError("max_tokens", "must be a positive integer")
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise TranslationError("thinking", "extended thinking is not translated to OpenAI chat")

    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of_parts(system, "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages", "must be a non-empty list")
    for i, message in enumerate(raw):
        messages.extend(_anthropic_message_to_openai(message, f"messages[{i}]"))
    out["messages"] = messages
    out["max_tokens"] = max_tokens
    if body.get("stop_sequences"):
        stops = body["stop_sequences"]
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise TranslationError("stop_sequences", "must be a list of strings")
        out["stop"] = stops
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [_anthropic_tool_to_openai(tool, i) for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise TranslationError("tool_choice", "must be an object")
        kind = choice.get("type")
        if kind in ("auto", "none"):
            out["tool_choice"] = kind
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise TranslationError("tool_choice.type", "must be 'auto', 'any', 'tool' (with a name) or 'none'")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


def _anthropic_tool_to_openai(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or not isinstance(tool.get("name"), str):
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise TranslationError(f"tools[{i}]", f"only client tools with a name and input_schema can be "
                                              f"translated, not {kind!r}")
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _anthropic_message_to_openai(message: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise TranslationError(f"{field}.role", "must be 'user' or 'assistant'")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{field}.content", "must be a string or a list of content blocks")
    if role == "assistant":
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "tool_use":
                calls.append({"id": block.get("id"), "type": "function",
                              "function": {"name": block.get("name"), "arguments": _dumps(block.get("input") or {})}})
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning: OpenAI chat has no place for it
            else:
                raise TranslationError(f"{field}.content[{j}].type", f"block {kind!r} cannot be translated to OpenAI")
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if calls:
            reply["tool_calls"] = calls
        return [reply]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"{field}.content[{j}]"
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                        "content": _text_of_parts(block.get("content"), f"{where}.content")})
        else:
            raise TranslationError(f"{where}.type", f"block {kind!r} cannot be translated to OpenAI")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _image_url(source: Any, field: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return str(source.get("url"))
    raise TranslationError(f"{field}.source", "must be a base64 or url image source")


# ------------------------------------------------------------------------------------------------
# Inbound: OpenAI chat completion → Anthropic message

def _anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": (usage.get("prompt_tokens") or 0) - cached, "output_tokens": usage.get("completion_tokens") or 0,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def _message_id(openai_id: Any) -> str:
    return openai_id if isinstance(openai_id, str) and openai_id.startswith("msg_") else f"msg_{uuid.uuid4().hex}"


def openai_to_anthropic_response(completion: dict[str, Any], *, model: str | None = None,
                                 stop_sequences: Iterable[str] = ()) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic message (its first choice; the inbound request
    never asks for more). ``stop_sequences`` (the request's) lets a stop caused by one of them read as
    ``stop_sequence``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = reply.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                        "name": function.get("name"), "input": _lenient_object(function.get("arguments"))})
    stop_reason, stop_sequence = stop_reason_of(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    return {"id": _message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model or completion.get("model"), "content": content,
            "stop_reason": stop_reason or "end_turn", "stop_sequence": stop_sequence,
            "usage": _anthropic_usage(completion.get("usage"))}


# ------------------------------------------------------------------------------------------------
# Inbound streaming: OpenAI chunks → Anthropic events

class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` events as Anthropic's stream: ``message_start`` and a ``ping``
    first, then ``content_block_start``/``content_block_delta``/``content_block_stop`` per text or tool
    call (indices counted from 0 in order), and at the end ``message_delta`` (``stop_reason``,
    ``stop_sequence``, usage) and ``message_stop``. An error chunk becomes an ``error`` event.

    :meth:`feed` takes raw bytes of the OpenAI stream; :meth:`chunk` one parsed chunk; :meth:`finish`
    ends the message (at ``[DONE]``, or when the stream ends: a stream cut before any finish reason
    ends with an ``error`` event instead, so the client does not take a cut answer for a whole one).
    """

    def __init__(self, model: str, *, stop_sequences: Iterable[str] = ()) -> None:
        self.model = model
        self.stop_sequences = list(stop_sequences)
        self.id = f"msg_{uuid.uuid4().hex}"
        self.started = False
        self.done = False
        self._sse = SseLines()
        self._block: int | None = None  # the open block's index
        self._block_kind: str | None = None
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index → block index
        self._finish: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        for _, data in self._sse.feed(chunk):
            out.extend(self._data(data))
        return out

    def close(self) -> list[bytes]:
        """The end of the byte stream: the message's end if ``[DONE]`` never came."""
        out: list[bytes] = []
        for _, data in self._sse.close():
            out.extend(self._data(data))
        return out + self.finish()

    def _data(self, data: str) -> list[bytes]:
        if data.strip() == "[DONE]":
            return self.finish()
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        return self.chunk(payload) if isinstance(payload, dict) else []

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [sse_event("message_start", {"type": "message_start", "message": message}),
                sse_event("ping", {"type": "ping"})]

    def _close_block(self) -> list[bytes]:
        if self._block is None:
            return []
        index, self._block, self._block_kind = self._block, None, None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._block, self._block_kind = self._blocks, kind
        self._blocks += 1
        out.append(sse_event("content_block_start", {"type": "content_block_start", "index": self._block,
                                                     "content_block": block}))
        return out

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        if self.done:
            return []
        if isinstance(chunk.get("error"), dict):
            return self.error(str(chunk["error"].get("message") or "upstream error"))
        out = self._start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._block_kind != "text":
                    out.extend(self._open_block("text", {"type": "text", "text": ""}))
                out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                             "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or []:
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self._tool_blocks:
                    out.extend(self._open_block("tool_use", {
                        "type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                        "name": function.get("name") or "", "input": {}}))
                    self._tool_blocks[position] = self._block  # type: ignore[assignment]
                if function.get("arguments"):
                    out.append(sse_event("content_block_delta", {
                        "type": "content_block_delta", "index": self._tool_blocks[position],
                        "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}}))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
        return out

    def finish(self) -> list[bytes]:
        if self.done:
            return []
        if self._finish is None:
            return self.error("the model's stream ended before it finished")
        out = self._start() + self._close_block()
        stop_reason, stop_sequence = stop_reason_of(self._finish, self._matched, self.stop_sequences)
        usage = _anthropic_usage(self._usage)
        out.append(sse_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": usage["output_tokens"], "input_tokens": usage["input_tokens"]}}))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        self.done = True
        return out

    def error(self, message: str, status: int = 500) -> list[bytes]:
        """End the stream with Anthropic's ``error`` event."""
        if self.done:
            return []
        self.done = True
        return [sse_event("error", anthropic_error(status, message))]


def iter_events(data: bytes) -> Iterator[tuple[str | None, dict[str, Any] | str]]:
    """Every SSE event in ``data`` (a whole stream) as ``(event, parsed data)``: for tests and tools."""
    parser = SseLines()
    for event, text in [*parser.feed(data), *parser.close()]:
        try:
            yield event, json.loads(text)
        except ValueError:
            yield event, text
