"""Anthropic Messages ⇄ OpenAI chat translation (modelyard.gateway.anthropic): every mapping both ways,
tools, streaming, round trips and each refusal. Pure functions: no server."""

from __future__ import annotations

import json

import pytest

from modelyard.gateway.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    SseLines,
    TranslationError,
    anthropic_error_to_openai,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    iter_events,
    openai_error_to_anthropic,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    sse_event,
)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "weather", "description": "the weather", "parameters": WEATHER}}
ANTHROPIC_TOOL = {"name": "weather", "description": "the weather", "input_schema": WEATHER}


def test_openai_request_to_anthropic_maps_every_field() -> None:
    body = {
        "model": "claude", "max_tokens": 50, "stop": "END", "temperature": 0.5, "top_p": 0.9, "stream": True,
        "user": "u-1", "seed": 3, "n": 1, "logprobs": False,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": "hello"},
        ],
    }
    assert openai_to_anthropic_request(body, model="claude-upstream") == {
        "model": "claude-upstream", "system": "be brief\n\nand kind", "max_tokens": 50, "stop_sequences": ["END"],
        "temperature": 0.5, "top_p": 0.9, "stream": True, "metadata": {"user_id": "u-1"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "hi"}, {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        ],
    }


def test_max_tokens_comes_from_either_field_else_the_documented_default() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert openai_to_anthropic_request({"model": "m", "messages": messages})["max_tokens"] == DEFAULT_MAX_TOKENS
    assert openai_to_anthropic_request({"model": "m", "messages": messages, "max_tokens": 7})["max_tokens"] == 7
    assert openai_to_anthropic_request({"model": "m", "messages": messages, "max_tokens": 7,
                                        "max_completion_tokens": 9})["max_tokens"] == 9
    assert openai_to_anthropic_request({"model": "m", "messages": messages}, default_max_tokens=11)["max_tokens"] == 11
    assert openai_to_anthropic_request({"model": "m", "messages": messages, "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


def test_openai_tools_and_tool_history_to_anthropic() -> None:
    body = {
        "model": "m", "tools": [OPENAI_TOOL], "tool_choice": "required", "parallel_tool_calls": False,
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "thanks"},
        ],
    }
    out = openai_to_anthropic_request(body)
    assert out["tools"] == [ANTHROPIC_TOOL]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
            {"type": "text", "text": "thanks"}]},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
])
def test_tool_choice_maps_both_ways(choice: object, expected: dict) -> None:
    openai = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [OPENAI_TOOL], "tool_choice": choice}
    anthropic = openai_to_anthropic_request(openai)
    assert anthropic["tool_choice"] == expected
    back = anthropic_to_openai_request(anthropic)
    assert back["tool_choice"] == choice and back["tools"] == [OPENAI_TOOL]


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    out = openai_to_anthropic_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "tools": [{"type": "function", "function": {"name": "now"}}]})
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize(("extra", "field"), [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"1": 5}}, "logit_bias"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"function_call": "auto"}, "function_call"),
    ({"modalities": ["text", "audio"]}, "modalities"), ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"frobnicate": 1}, "frobnicate"), ({"temperature": 1.5}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": 3}, "stop"), ({"tools": [{"type": "web_search"}]}, "tools[0].type"), ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
def test_what_anthropic_cannot_express_is_refused_naming_the_field(extra: dict, field: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(TranslationError) as refused:
        openai_to_anthropic_request(body)
    error = refused.value
    assert error.status_code == 400 and error.param == field and f"'{field}'" in error.message
    assert error.body()["error"]["param"] == field and error.body()["error"]["code"] == "unsupported_parameter"


def test_fields_that_ask_for_nothing_are_accepted() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "logprobs": False, "top_logprobs": 0,
            "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0, "response_format": {"type": "text"},
            "seed": 1, "store": False, "metadata": {"a": "b"}, "stream_options": {"include_usage": True}, "top_k": 5}
    assert openai_to_anthropic_request(body)["top_k"] == 5


def test_anthropic_response_to_openai() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                           {"type": "text", "text": "Let me look. "},
                           {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
               "stop_reason": "tool_use", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2}}
    assert anthropic_to_openai_response(message, model="mine", created=7) == {
        "id": "msg_1", "object": "chat.completion", "created": 7, "model": "mine",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look. ",
            "tool_calls": [{"id": "toolu_1", "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                  "prompt_tokens_details": {"cached_tokens": 2}},
    }
    only_tool = anthropic_to_openai_response({**message, "content": message["content"][2:]})
    assert only_tool["choices"][0]["message"]["content"] is None and only_tool["model"] == "claude-x"


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"),
])
def test_stop_reason_to_finish_reason(stop_reason: str, finish: str) -> None:
    message = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    assert anthropic_to_openai_response(message)["choices"][0]["finish_reason"] == finish


def _anthropic_stream(*events: dict) -> bytes:
    return b"".join(sse_event(e["type"], e) for e in events)


TOOL_STREAM = _anthropic_stream(
    {"type": "message_start", "message": {"id": "msg_9", "type": "message", "role": "assistant", "content": [],
                                          "model": "claude", "usage": {"input_tokens": 20, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " now"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "Paris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
)


def _openai_chunks(lines: list[bytes]) -> list[object]:
    return [data for _, data in iter_events(b"".join(lines))]


def test_anthropic_stream_to_openai_chunks_with_tools_and_usage() -> None:
    stream = AnthropicToOpenAIStream("mine", include_usage=True, created=1)
    out: list[bytes] = []
    for i in range(0, len(TOOL_STREAM), 7):  # cut anywhere
        out.extend(stream.feed(TOOL_STREAM[i:i + 7]))
    out.extend(stream.close())
    chunks = _openai_chunks(out)
    assert chunks[-1] == "[DONE]"
    body = [c for c in chunks if isinstance(c, dict)]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mine" and c["id"] == "msg_9" for c in body)
    deltas = [c["choices"][0]["delta"] for c in body if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Checking now"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "weather", "arguments": ""}}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in body if c["choices"]][-1] == "tool_calls"
    assert body[-1]["choices"] == [] and body[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 15, "total_tokens": 35}


def test_anthropic_stream_errors_and_cuts_end_with_an_error_and_done() -> None:
    stream = AnthropicToOpenAIStream("mine")
    out = stream.feed(TOOL_STREAM[:200]) + stream.feed(
        sse_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    chunks = _openai_chunks(out)
    assert chunks[-2] == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}}
    assert chunks[-1] == "[DONE]" and stream.close() == []
    cut = AnthropicToOpenAIStream("mine")
    chunks = _openai_chunks(cut.feed(TOOL_STREAM[:300]) + cut.close())
    assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["code"] == "upstream_incomplete"
    no_usage = AnthropicToOpenAIStream("mine")
    assert all("usage" not in c for c in _openai_chunks(no_usage.feed(TOOL_STREAM)) if isinstance(c, dict))


def test_anthropic_request_to_openai_maps_every_field() -> None:
    body = {
        "model": "pirate", "max_tokens": 30, "system": [{"type": "text", "text": "be a pirate"}],
        "stop_sequences": ["Arr"], "temperature": 0.2, "top_p": 0.8, "top_k": 4, "stream": True,
        "metadata": {"user_id": "u"}, "tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"},
                                              {"type": "text", "text": "checking"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "snow"}]},
                                         {"type": "text", "text": "and "}, {"type": "text", "text": "tomorrow?"}]},
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QQ"}},
                                         {"type": "text", "text": "this"}]},
        ],
    }
    assert anthropic_to_openai_request(body) == {
        "model": "pirate", "max_tokens": 30, "stop": ["Arr"], "temperature": 0.2, "top_p": 0.8, "top_k": 4,
        "stream": True, "stream_options": {"include_usage": True}, "user": "u",
        "tools": [OPENAI_TOOL], "tool_choice": "auto", "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "be a pirate"},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "checking", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "snow"},
            {"role": "user", "content": "and tomorrow?"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ"}},
                                         {"type": "text", "text": "this"}]},
        ],
    }


@pytest.mark.parametrize(("extra", "field"), [
    ({"max_tokens": None}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"), ({"mcp_servers": [{}]}, "mcp_servers"),
    ({"container": "c"}, "container"), ({"whatever": 1}, "whatever"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.type"), ({"tool_choice": "auto"}, "tool_choice"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image", "source": {}}]}]}]},
     "messages[0].content[0].content[0]"),
    ({"stop_sequences": "END"}, "stop_sequences"),
])
def test_what_openai_chat_cannot_express_is_refused_naming_the_field(extra: dict, field: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(TranslationError) as refused:
        anthropic_to_openai_request(body)
    assert refused.value.param == field and refused.value.status_code == 400


def test_openai_completion_to_anthropic_message() -> None:
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "model": "pirate", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Arr",
         "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                        {"id": "call_10", "type": "function", "function": {"name": "weather", "arguments": "{broken"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
    message = openai_to_anthropic_response(completion, model="asked")
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == "asked" and message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["content"] == [
        {"type": "text", "text": "Arr"},
        {"type": "tool_use", "id": "call_9", "name": "weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_10", "name": "weather", "input": {"arguments": "{broken"}}]
    assert message["usage"] == {"input_tokens": 9, "output_tokens": 4, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0}


@pytest.mark.parametrize(("finish", "matched", "expected"), [
    ("stop", None, ("end_turn", None)), ("stop", "Arr", ("stop_sequence", "Arr")), ("stop", 2, ("end_turn", None)),
    ("length", None, ("max_tokens", None)), ("tool_calls", None, ("tool_use", None)),
    ("content_filter", None, ("refusal", None)),
])
def test_finish_reason_to_stop_reason(finish: str, matched: object, expected: tuple) -> None:
    completion = {"choices": [{"index": 0, "finish_reason": finish, "stop_reason": matched,
                               "message": {"role": "assistant", "content": "x"}}]}
    message = openai_to_anthropic_response(completion, stop_sequences=["Arr"])
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def _openai_stream(*chunks: dict) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}


def test_openai_stream_to_anthropic_events_with_text_and_tools() -> None:
    raw = _openai_stream(
        _chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}},
    )
    stream = OpenAIToAnthropicStream("pirate")
    out: list[bytes] = []
    for i in range(0, len(raw), 5):
        out.extend(stream.feed(raw[i:i + 5]))
    out.extend(stream.close())
    events = list(iter_events(b"".join(out)))
    assert all(name == data["type"] for name, data in events)  # every event has its `event:` line
    names = [name for name, _ in events]
    assert names == ["message_start", "ping",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["model"] == "pirate" and start["role"] == "assistant" and start["content"] == [] and start["id"].startswith("msg_")
    blocks = [d for n, d in events if n == "content_block_start"]
    assert [b["index"] for b in blocks] == [0, 1, 2]
    assert blocks[1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert "".join(d["delta"].get("text", "") for d in deltas if d["index"] == 0) == "Hello"
    assert json.loads("".join(d["delta"]["partial_json"] for d in deltas if d["index"] == 1)) == {"city": "Oslo"}
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1, 2]
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"output_tokens": 8, "input_tokens": 12}}


def test_openai_stream_stop_sequence_errors_and_cuts() -> None:
    stream = OpenAIToAnthropicStream("m", stop_sequences=["Arr"])
    events = list(iter_events(b"".join(stream.feed(_openai_stream(_chunk({"content": "yo"}), _chunk({}, "stop", stop_reason="Arr"))))))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "Arr"}
    assert stream.close() == []

    failing = OpenAIToAnthropicStream("m")
    raw = (f"data: {json.dumps(_chunk({'content': 'y'}))}\n\n"
           '\ndata: {"error": {"message": "replica died", "type": "engine_error"}}\n\ndata: [DONE]\n\n').encode()
    events = list(iter_events(b"".join(failing.feed(raw) + failing.close())))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "replica died"}})
    assert "message_stop" not in [n for n, _ in events]

    cut = OpenAIToAnthropicStream("m")
    events = list(iter_events(b"".join(cut.feed(f"data: {json.dumps(_chunk({'content': 'y'}))}\n\n".encode()) + cut.close())))
    assert events[-1][0] == "error"

    empty = OpenAIToAnthropicStream("m")
    events = list(iter_events(b"".join(empty.feed(_openai_stream(_chunk({}, "length"))))))
    assert [n for n, _ in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[2][1]["delta"]["stop_reason"] == "max_tokens"


def test_round_trip_openai_to_anthropic_to_openai_keeps_what_it_can() -> None:
    request = {
        "model": "m", "max_tokens": 20, "stop": ["X"], "temperature": 0.3, "top_p": 0.5, "user": "u",
        "tools": [OPENAI_TOOL], "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
            {"role": "user", "content": "more"},
        ],
    }
    assert anthropic_to_openai_request(openai_to_anthropic_request(request)) == request

    completion = {"id": "msg_1", "object": "chat.completion", "created": 5, "model": "m", "choices": [
        {"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "ok",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    assert anthropic_to_openai_response(openai_to_anthropic_response(completion), created=5) == completion


def test_round_trip_of_a_stream_both_ways() -> None:
    inbound = OpenAIToAnthropicStream("m")
    anthropic_bytes = b"".join(inbound.feed(_openai_stream(
        _chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}),
        _chunk({}, "tool_calls"),
        {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})))
    outbound = AnthropicToOpenAIStream("m", include_usage=True)
    chunks = [c for c in _openai_chunks(outbound.feed(anthropic_bytes) + outbound.close()) if isinstance(c, dict)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hi"
    assert next(c for d in deltas for c in d.get("tool_calls", []))["id"] == "call_1"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_error_bodies_both_ways() -> None:
    openai = json.dumps({"error": {"message": "The model `ghost` does not exist.", "type": "invalid_request_error",
                                   "param": None, "code": "model_not_found"}}).encode()
    assert openai_error_to_anthropic(openai, 404) == {
        "type": "error", "error": {"type": "not_found_error", "message": "The model `ghost` does not exist."}}
    assert openai_error_to_anthropic(b"boom", 503)["error"] == {"type": "api_error", "message": "boom"}
    assert openai_error_to_anthropic(b'{"detail": "no"}', 429)["error"] == {"type": "rate_limit_error", "message": "no"}
    anthropic = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert anthropic_error_to_openai(json.dumps(anthropic).encode(), 529) == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}}


def test_sse_lines_handle_cuts_comments_crlf_and_a_missing_final_blank_line() -> None:
    parser = SseLines()
    raw = b": keepalive\r\nevent: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\ndata: a\ndata: b\n\ndata: tail"
    events = [e for i in range(len(raw)) for e in parser.feed(raw[i:i + 1])] + parser.close()
    assert events == [("ping", '{"type":"ping"}'), (None, "a\nb"), (None, "tail")]
