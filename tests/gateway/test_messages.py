"""``POST /v1/messages`` with Anthropic's official SDK against a live server and the built-in engine: a
plain message to an adapter answers what ``/v1/chat/completions`` answers for the same greedy request,
the stream adds up to the same text, tool-use requests are translated down to the engine, and errors
come in Anthropic's shape. (Every mapping is unit-tested in test_anthropic.py.)

These start a built-in engine process, so they run on SQLite only."""

from __future__ import annotations

import os
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from fastapi import FastAPI
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.gateway.messages import router as messages_router
from tests.conftest import AUTH, TRUSTED
from tests.endpoints.test_serving import PROMPT, start_endpoint

SYSTEM = "You are a helpful pirate."
GREEDY = {"temperature": 0}  # this SDK version has no temperature argument; the API still takes it


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'messages.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


@pytest.fixture
def serving(app: FastAPI, registry: tuple[Modelyard, Together], live_server: str) -> str:
    """A live server with ``/v1/messages`` and an endpoint of the fixture model serving ``pirate``."""
    if not any(getattr(route, "path", None) == "/v1/messages" for route in app.routes):
        app.include_router(messages_router)  # until modelyard.app includes it
    _, tg = registry
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    return live_server


def test_the_anthropic_sdk_plain_and_streamed_matches_chat_completions(serving: str) -> None:
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=serving + "/v1", max_retries=0)
    client = anthropic.Anthropic(api_key=os.environ["MODELYARD_API_KEY"], base_url=serving, max_retries=0)
    expected = oa.chat.completions.create(model="pirate", max_tokens=10, temperature=0,
                                          messages=[{"role": "system", "content": SYSTEM}, *PROMPT])
    text = expected.choices[0].message.content
    assert text

    message = client.messages.create(model="pirate", max_tokens=10, system=SYSTEM, messages=PROMPT,
                                     extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.model == "pirate"
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == text
    assert message.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[expected.choices[0].finish_reason]
    # Anthropic counts prompt tokens read from the engine's prefix cache apart: this prompt was sent before
    assert expected.usage.prompt_tokens_details.cached_tokens < message.usage.cache_read_input_tokens
    assert (message.usage.input_tokens + message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        expected.usage.prompt_tokens, expected.usage.completion_tokens)

    with client.messages.stream(model="pirate", max_tokens=10, system=SYSTEM,
                                messages=PROMPT, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.model == "pirate" and final.content[0].text == text and final.stop_reason == message.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        message.usage.input_tokens, message.usage.output_tokens)

    # the raw events: message_start, a text block at index 0, message_delta, message_stop
    events = list(client.messages.create(model="pirate", max_tokens=10, system=SYSTEM,
                                         messages=PROMPT, stream=True, extra_body=GREEDY))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {e.index for e in events if e.type.startswith("content_block")} == {0}


def test_tool_use_is_translated_to_the_engine_and_errors_have_anthropics_shape(serving: str) -> None:
    client = anthropic.Anthropic(api_key=os.environ["MODELYARD_API_KEY"], base_url=serving, max_retries=0)
    tool = {"name": "weather", "description": "the weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    history = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "snow"}]},
    ]
    # a conversation with tool_use and tool_result blocks reaches the engine as OpenAI tool messages
    answered = client.messages.create(model="pirate", max_tokens=5, messages=history, extra_body=GREEDY)
    assert answered.content and answered.content[0].type == "text" and answered.usage.output_tokens > 0

    # tool definitions arrive at the engine as OpenAI tools; the built-in engine has no tool calling
    # and says so, naming the field, and the refusal reaches the SDK as Anthropic's 400
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="pirate", max_tokens=5, messages=history, tools=[tool],
                               tool_choice={"type": "tool", "name": "weather"})
    assert refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "tool" in refused.value.body["error"]["message"]

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="ghost", max_tokens=5, messages=PROMPT)
    assert missing.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                             "message": "The model `ghost` does not exist."}}
    with pytest.raises(anthropic.AuthenticationError) as unknown_key:
        anthropic.Anthropic(api_key="not-a-key", base_url=serving, max_retries=0).messages.create(
            model="pirate", max_tokens=5, messages=PROMPT)
    assert unknown_key.value.body["type"] == "error"
    assert unknown_key.value.body["error"]["type"] == "authentication_error"
    for body, field in (({"model": "pirate", "messages": PROMPT}, "max_tokens"),
                        ({"model": "pirate", "max_tokens": 5, "messages": PROMPT,
                          "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
                        ({"max_tokens": 5, "messages": PROMPT}, "model")):
        response = httpx.post(serving + "/v1/messages", json=body, headers=AUTH())
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert f"'{field}'" in error["error"]["message"]
