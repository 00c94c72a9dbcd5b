"""The whole Anthropic translation round trip, with real SDKs at both ends.

An OpenAI client (the official ``openai`` SDK) asks Modelyard for ``default/claude-pirate``, a registry
model whose ``backend_format`` is ``ANTHROPIC_MESSAGES`` and whose provider's ``host_url`` is a
Modelyard server's own ``/v1/messages``. So the chat request is translated to Anthropic's Messages
API on the way out, arrives at our inbound ``/v1/messages`` (keyed by ``x-api-key``), is translated
back to a chat request for the ``pirate`` adapter on the built-in engine, and the answer makes the
same two translations in reverse. Greedy, it must say exactly what ``model="pirate"`` says directly.

The provider points at the same live server (one engine start); it is a different hop all the same:
a second HTTP request, authenticated by the provider's secret. SQLite only: it starts an engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import AUTH, TRUSTED
from tests.endpoints.test_serving import PROMPT, start_endpoint

PROVIDERS = "/apis/models/v2/workspaces/default/providers"
SYSTEM = "You are a helpful pirate."
MODEL = "default/claude-pirate"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'roundtrip.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def test_openai_sdk_through_an_anthropic_provider_that_is_modelyard(
        registry: tuple[Modelyard, Together], live_server: str) -> None:
    ours, tg = registry
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")

    # the provider's key: an access key of its own, kept as a workspace secret, sent as Anthropic sends it
    key = ours.access_keys.create(name="anthropic-side", description="the round trip's provider key")
    ours.secrets.create("default", "anthropic-side-key", key.token)
    http = httpx.Client(base_url=live_server, headers=AUTH(), timeout=60)
    created = http.post(PROVIDERS, json={
        "name": "modelyard-messages", "host_url": live_server, "api_key_secret_name": "anthropic-side-key",
        "auth_header_format": "x-api-key: {{ auth_secret }}"})
    assert created.status_code == 201, created.text
    ours.models.create("default", name="claude-pirate", backend_format="ANTHROPIC_MESSAGES",
                       model_providers=["modelyard-messages"], api_endpoint={"model_id": "pirate"})

    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, *PROMPT]
    direct = oa.chat.completions.create(model="pirate", messages=messages, max_tokens=10, temperature=0)
    text = direct.choices[0].message.content
    assert text

    # plain: OpenAI → Anthropic → (our /v1/messages) OpenAI → engine, and all the way back
    answer = oa.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert answer.model == MODEL
    assert answer.object == "chat.completion" and len(answer.choices) == 1
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason == direct.choices[0].finish_reason
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        direct.usage.prompt_tokens, direct.usage.completion_tokens)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    # streamed: Anthropic's events on the inner hop, OpenAI chunks (and usage on request) on the outer
    chunks = list(oa.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
    assert chunks and {c.model for c in chunks} == {MODEL}
    streamed = "".join(choice.delta.content or "" for c in chunks for choice in c.choices)
    assert streamed == text
    finishes = [choice.finish_reason for c in chunks for choice in c.choices if choice.finish_reason]
    assert finishes == [direct.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == direct.usage.completion_tokens

    # what the translation cannot express is refused before anything is sent, naming the field
    with pytest.raises(openai.BadRequestError) as refused:
        oa.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, n=2)
    assert refused.value.status_code == 400
    assert refused.value.param == "n" and "'n': " in refused.value.message

    # the reference's readiness route knows the provider (and asks nothing of it)
    ready = http.get("/apis/inference-gateway/v2/workspaces/default/provider/modelyard-messages/ready")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True, "provider": "default/modelyard-messages", "host_url": live_server}
