"""Our own endpoints are providers of their base model and adapters: listed with the others, kept in
step with the endpoint (attach, detach, state, delete), read-only through the providers API, and
called through the endpoint's own replicas: a registry model whose provider is an endpoint, the
``/provider/{name}/...`` routes and the base model's registry name all take the endpoint path."""

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
from tests.endpoints.conftest import registry
from tests.endpoints.test_serving import PROMPT, start_endpoint, wait_for

__all__ = ["registry"]

PROVIDERS = "/apis/models/v2/workspaces/default/providers"
GATEWAY = "/apis/inference-gateway/v2/workspaces/default"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'providers.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.3, engine_start_timeout=120)


def _ours(http: httpx.Client, endpoint_id: str) -> dict:
    providers = http.get(PROVIDERS, params={"page_size": 100}).json()["data"]
    (provider,) = [p for p in providers if p.get("model_deployment_id") == endpoint_id]
    return provider


def test_an_endpoint_is_the_provider_of_its_model_and_adapters(
    registry: tuple[Modelyard, Together], live_server: str,
) -> None:
    ours, tg = registry
    http = httpx.Client(base_url=live_server, headers=AUTH(), timeout=60)
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    name = endpoint.name.split("/", 1)[1]
    provider = wait_for(lambda: (p := _ours(http, endpoint.id))["status"] == "READY" and p, 30, "provider READY")
    assert provider["name"] == name and provider["host_url"] == f"modelyard://endpoints/{endpoint.id}"
    assert provider["served_models"] == [{"model_entity_id": "default/tiny", "served_model_name": endpoint.name}]
    assert http.get(f"{PROVIDERS}/{name}").json()["id"] == provider["id"]

    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert {"model_entity_id": "default/pirate", "served_model_name": "pirate"} in \
        http.get(f"{PROVIDERS}/{name}").json()["served_models"]

    # read-only through the providers API: it follows the endpoint
    for response in (http.put(f"{PROVIDERS}/{name}", json={"host_url": "http://example.com"}),
                     http.put(f"{PROVIDERS}/{name}/status", json={"status": "ERROR"}),
                     http.delete(f"{PROVIDERS}/{name}")):
        assert response.status_code == 409 and endpoint.id in response.text, response.text

    def chat(model: str) -> openai.types.chat.ChatCompletion:
        return oa.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)

    pirate = chat("pirate").choices[0].message.content
    base = chat(endpoint.name).choices[0].message.content
    # a registry model whose provider is the endpoint: served by the endpoint's replicas, answered as itself
    ours.models.create("default", name="support-bot", model_providers=[name], api_endpoint={"model_id": "pirate"})
    answer = chat("support-bot")
    assert answer.model == "support-bot" and answer.choices[0].message.content == pirate
    streamed = list(oa.chat.completions.create(model="default/support-bot", messages=PROMPT, max_tokens=8,
                                               temperature=0, stream=True))
    assert {c.model for c in streamed} == {"default/support-bot"}
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == pirate
    # the base model's registry name, served by the endpoint that runs it
    assert chat("default/tiny").choices[0].message.content == base
    # listed once, under the endpoint's names
    listed = {m.id for m in oa.models.list().data}
    assert {endpoint.name, "pirate", "default/support-bot"} <= listed and "default/pirate" not in listed

    # the provider routes: ready, and straight through to a replica (body unchanged)
    assert http.get(f"{GATEWAY}/provider/{name}/ready").json() == {
        "ready": True, "provider": f"default/{name}", "host_url": f"modelyard://endpoints/{endpoint.id}"}
    direct = http.post(f"{GATEWAY}/provider/{name}/-/v1/chat/completions",
                       json={"model": "pirate", "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    assert direct.status_code == 200 and direct.json()["choices"][0]["message"]["content"] == pirate
    models = http.get(f"{GATEWAY}/provider/{name}/-/v1/models")
    assert models.status_code == 200 and "pirate" in {m["id"] for m in models.json()["data"]}

    # it follows the endpoint: detach, stop, delete
    tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert [m["model_entity_id"] for m in http.get(f"{PROVIDERS}/{name}").json()["served_models"]] == ["default/tiny"]
    tg.endpoints.update(endpoint.id, state="STOPPED")
    wait_for(lambda: http.get(f"{PROVIDERS}/{name}").json()["status"] == "UNKNOWN", 30, "provider not READY")
    assert http.get(f"{GATEWAY}/provider/{name}/ready").json()["ready"] is False
    stopped = http.post(f"{GATEWAY}/provider/{name}/-/v1/chat/completions", json={"model": "x"})
    assert stopped.status_code == 503
    ours.models.delete("default", "support-bot")
    tg.endpoints.delete(endpoint.id)
    assert http.get(f"{PROVIDERS}/{name}").status_code == 404
