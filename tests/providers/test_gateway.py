"""The gateway calls what the registry describes: providers (extras, key, served names), a model's
api_endpoint, the reference's /model, /provider and /openai routes, prompts, and failures; against a
recording upstream, with the official openai SDK (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelyard.client import Modelyard
from tests.conftest import AUTH, free_port
from tests.providers.upstream import Recorder, recording_upstream

PROVIDERS = "/apis/models/v2/workspaces/default/providers"
MODELS = "/apis/models/v2/workspaces/default/models"
IGW = "/apis/inference-gateway/v2/workspaces/default"
KEY = "sk-upstream-very-secret-1234"


@pytest.fixture
def upstream() -> Iterator[tuple[Recorder, str]]:
    with recording_upstream(("up-model", "other-model")) as pair:
        yield pair


@pytest.fixture
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, headers=AUTH(), timeout=30) as client:
        yield client


def _sdk(live_server: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)


def _wait_ready(http: httpx.Client, name: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"{PROVIDERS}/{name}").json()
        if body["status"] in ("READY", "ERROR") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _provider(http: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = http.post(PROVIDERS, json={"name": "prov", "host_url": url, **fields})
    assert response.status_code == 201, response.text
    return _wait_ready(http, "prov")


def test_provider_extras_key_and_served_name(live_server: str, http: httpx.Client, upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    with Modelyard(live_server) as ours:
        ours.secrets.create("default", "up-key", KEY)
    provider = _provider(
        http, url, api_key_secret_name="up-key", auth_header_format="x-api-key: {{ secret }}",
        enabled_models=["up-model"],
        default_extra_body={"temperature": 0.1, "top_k": 5}, required_extra_body={"max_tokens": 7},
        default_extra_headers={"x-tier": "default", "x-org": "acme"}, required_extra_headers={"x-locked": "yes"},
    )
    assert provider["status"] == "READY", provider
    assert provider["served_models"] == [{"model_entity_id": "default/up-model", "served_model_name": "up-model"}]
    probe = recorder.last("/v1/models")
    assert probe["headers"]["x-api-key"] == KEY and probe["headers"]["x-locked"] == "yes"
    assert "authorization" not in probe["headers"]

    created = http.post(MODELS, json={"name": "chatty", "model_providers": ["default/prov"],
                                      "api_endpoint": {"model_id": "up-model"}})
    assert created.status_code == 201, created.text
    sdk = _sdk(live_server)
    answer = sdk.chat.completions.create(
        model="default/chatty", messages=[{"role": "user", "content": "hi"}], temperature=0.9, max_tokens=100,
        extra_headers={"x-tier": "premium", "x-locked": "no"})
    assert answer.model == "default/chatty"  # the client gets its own name back
    sent = recorder.last("/v1/chat/completions")
    assert sent["body"]["model"] == "up-model"
    assert sent["body"]["temperature"] == 0.9  # the request overrides a default
    assert sent["body"]["top_k"] == 5  # a default fills in
    assert sent["body"]["max_tokens"] == 7  # a required extra cannot be overridden
    headers = sent["headers"]
    assert headers["x-tier"] == "premium" and headers["x-org"] == "acme" and headers["x-locked"] == "yes"
    assert headers["x-api-key"] == KEY and headers.get("authorization") is None

    assert sdk.chat.completions.create(model="chatty", messages=[{"role": "user", "content": "hi"}]).model == "chatty"
    completion = sdk.completions.create(model="chatty", prompt="once")
    assert completion.model == "chatty" and recorder.last("/v1/completions")["body"]["model"] == "up-model"

    # a model the provider serves, called without an entity of its own
    assert sdk.chat.completions.create(model="default/up-model", messages=[{"role": "user", "content": "x"}]).model \
        == "default/up-model"
    with pytest.raises(openai.NotFoundError):  # not in enabled_models
        sdk.chat.completions.create(model="default/other-model", messages=[{"role": "user", "content": "x"}])

    ids = {m.id for m in sdk.models.list()}
    assert {"default/chatty", "default/up-model"} <= ids
    gw_ids = {m["id"] for m in http.get(IGW + "/openai/-/v1/models").json()["data"]}
    assert {"default/chatty", "default/up-model"} <= gw_ids

    # streamed: passed through as it comes, with model rewritten
    chunks = list(sdk.chat.completions.create(model="default/chatty", messages=[{"role": "user", "content": "hi"}],
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello"
    assert {c.model for c in chunks} == {"default/chatty"}
    assert recorder.last("/v1/chat/completions")["body"]["stream"] is True


def test_reference_routes(live_server: str, http: httpx.Client, upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    _provider(http, url, default_extra_headers={"x-extra": "from-provider"})
    http.post(MODELS, json={"name": "fake-llm", "model_providers": ["prov"], "api_endpoint": {"model_id": "up-model"}})

    via_openai = http.post(IGW + "/openai/-/v1/chat/completions",
                           json={"model": "default/fake-llm", "messages": [{"role": "user", "content": "hi"}]})
    assert via_openai.status_code == 200 and via_openai.json()["model"] == "default/fake-llm"

    via_model = http.post(IGW + "/model/fake-llm/-/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}]})
    assert via_model.status_code == 200, via_model.text
    assert via_model.json()["model"] == "fake-llm"
    assert recorder.last("/v1/chat/completions")["body"] == {"messages": [{"role": "user", "content": "hi"}],
                                                             "model": "up-model"}

    raw = json.dumps({"model": "whatever-i-say", "messages": [{"role": "user", "content": "hi"}]})
    via_provider = http.post(IGW + "/provider/prov/-/v1/chat/completions?x=1", content=raw,
                             headers={"content-type": "application/json"})
    assert via_provider.status_code == 200 and via_provider.json()["model"] == "whatever-i-say"  # unchanged
    sent = recorder.last("/v1/chat/completions")
    assert sent["body"] == json.loads(raw) and sent["query"] == "x=1"
    assert sent["headers"]["x-extra"] == "from-provider"
    assert http.get(IGW + "/provider/prov/-/v1/models").json()["data"][0]["id"] == "up-model"

    ready = http.get(IGW + "/provider/prov/ready")
    assert ready.json() == {"ready": True, "provider": "default/prov", "host_url": url}
    assert http.get(IGW + "/provider/nope/ready").status_code == 404

    missing = http.post(IGW + "/openai/-/v1/chat/completions", json={"model": "nope", "messages": []})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    no_model = http.post(IGW + "/openai/-/v1/chat/completions", json={"messages": []})
    assert no_model.status_code == 400


def test_api_endpoint_model_with_the_openai_sdk_and_its_prompt(live_server: str, http: httpx.Client,
                                                               upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    created = http.post(MODELS, json={
        "name": "direct", "api_endpoint": {"url": url + "/v1", "model_id": "up-model", "api_key": KEY, "format": "openai"},
        "prompt": {"system_prompt": "Be brief.", "icl_few_shot_examples": "Q: 1+1 A: 2",
                   "system_prompt_template": "{{ system_prompt }} Examples: {{ icl_few_shot_examples }}",
                   "inference_params": {"temperature": 0.2, "max_tokens": 50, "top_p": 0.5}}})
    assert created.status_code == 201, created.text
    assert KEY not in created.text
    sdk = _sdk(live_server)
    answer = sdk.chat.completions.create(model="default/direct", messages=[{"role": "user", "content": "hi"}],
                                         temperature=1.0)
    assert answer.model == "default/direct"
    sent = recorder.last("/v1/chat/completions")
    assert sent["path"] == "/v1/chat/completions"  # the base URL's /v1 is not doubled
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "up-model"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief. Examples: Q: 1+1 A: 2"}
    assert (sent["body"]["temperature"], sent["body"]["max_tokens"], sent["body"]["top_p"]) == (1.0, 50, 0.5)

    sdk.chat.completions.create(model="direct", messages=[{"role": "system", "content": "mine"},
                                                          {"role": "user", "content": "hi"}])
    messages = recorder.last("/v1/chat/completions")["body"]["messages"]
    assert messages == [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]


def test_upstream_errors(live_server: str, http: httpx.Client, upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    with Modelyard(live_server) as ours:
        ours.secrets.create("default", "up-key", KEY)
    dead = f"http://127.0.0.1:{free_port()}"
    response = http.post(PROVIDERS, json={"name": "down", "host_url": dead, "api_key_secret_name": "up-key"})
    assert response.status_code == 201
    provider = _wait_ready(http, "down")
    assert provider["status"] == "ERROR" and dead in provider["status_message"] and KEY not in provider["status_message"]
    http.post(MODELS, json={"name": "unlucky", "model_providers": ["down"]})
    sdk = _sdk(live_server)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="unlucky", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    text = caught.value.response.text
    assert "default/down" in text and "ConnectError" in text and KEY not in text

    direct = http.post(MODELS, json={"name": "dead-direct", "api_endpoint": {"url": dead, "api_key": KEY}})
    assert direct.status_code == 201
    failed = http.post("/v1/chat/completions", json={"model": "dead-direct", "messages": []})
    assert failed.status_code == 502 and KEY not in failed.text and "dead-direct" in failed.text

    _provider(http, url)
    http.post(MODELS, json={"name": "refused", "model_providers": ["prov"]})
    recorder.status = 422
    passed = http.post("/v1/chat/completions", json={"model": "refused", "messages": []})
    assert passed.status_code == 422
    assert passed.json()["error"]["code"] == "upstream_says_no"

    http.put(PROVIDERS + "/prov", json={"host_url": url, "api_key_secret_name": "no-such-secret"})
    missing_key = http.post("/v1/chat/completions", json={"model": "refused", "messages": []})
    assert missing_key.status_code == 502 and "no-such-secret" in missing_key.text


def test_anthropic_backend_format(live_server: str, http: httpx.Client, upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    with Modelyard(live_server) as ours:
        ours.secrets.create("default", "up-key", KEY)
    _provider(http, url, api_key_secret_name="up-key", required_extra_headers={"anthropic-beta": "x"})
    created = http.post(MODELS, json={"name": "claude", "model_providers": ["prov"], "backend_format": "ANTHROPIC_MESSAGES",
                                      "api_endpoint": {"model_id": "claude-up"},
                                      "prompt": {"system_prompt": "Be brief."}})
    assert created.status_code == 201, created.text
    sdk = _sdk(live_server)
    answer = sdk.chat.completions.create(model="default/claude", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=20, stop=["END"])
    assert answer.model == "default/claude" and answer.choices[0].message.content == "hello"
    assert answer.choices[0].finish_reason == "length" and answer.usage.total_tokens == 5
    sent = recorder.last("/v1/messages")
    assert sent["body"]["model"] == "claude-up" and sent["body"]["max_tokens"] == 20
    assert sent["body"]["system"] == "Be brief." and sent["body"]["stop_sequences"] == ["END"]
    assert sent["body"]["messages"] == [{"role": "user", "content": "hi"}] or \
        sent["body"]["messages"][0]["role"] == "user"
    assert sent["headers"]["x-api-key"] == KEY and sent["headers"]["anthropic-version"]
    assert sent["headers"]["anthropic-beta"] == "x"

    chunks = list(sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello"
    assert {c.model for c in chunks} == {"claude"}

    with pytest.raises(openai.BadRequestError) as caught:  # what Anthropic cannot express: 400 naming the field
        sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], n=2)
    assert "'n'" in str(caught.value)


def test_served_models_name_the_entities_that_use_the_provider(live_server: str, http: httpx.Client,
                                                               upstream: tuple[Recorder, str]) -> None:
    _, url = upstream
    http.post(MODELS, json={"name": "mine", "model_providers": ["prov"], "api_endpoint": {"model_id": "other-model"}})
    http.post(MODELS, json={"name": "not-served", "model_providers": ["prov"], "api_endpoint": {"model_id": "absent"}})
    provider = _provider(http, url)
    assert provider["status"] == "READY"
    assert provider["served_models"] == [
        {"model_entity_id": "default/up-model", "served_model_name": "up-model"},
        {"model_entity_id": "default/other-model", "served_model_name": "other-model"},
        {"model_entity_id": "default/mine", "served_model_name": "other-model"},
    ]
