"""A provider pointed at a live built-in engine (through a Modelyard server's own OpenAI routes, so the
provider's key is a real access key sent by its auth_header_format). SQLite only: it starts an engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import openai
import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import AUTH, TRUSTED
from tests.endpoints.conftest import registry
from tests.endpoints.test_serving import start_endpoint, wait_for

__all__ = ["registry"]

PROVIDERS = "/apis/models/v2/workspaces/default/providers"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'providers.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def test_a_provider_in_front_of_the_engine(registry: tuple[Modelyard, Together], live_server: str) -> None:
    ours, tg = registry
    served = start_endpoint(tg).name  # the engine knows the base model by the endpoint's name
    ours.secrets.create("default", "self-key", os.environ["MODELYARD_API_KEY"])
    http = httpx.Client(base_url=live_server, headers=AUTH(), timeout=60)
    created = http.post(PROVIDERS, json={
        "name": "engine", "host_url": live_server + "/v1", "api_key_secret_name": "self-key",
        "auth_header_format": "Bearer {{ secret }}", "enabled_models": [served],
        "default_extra_body": {"temperature": 0, "max_tokens": 1}, "required_extra_body": {"max_tokens": 2}})
    assert created.status_code == 201, created.text
    provider = wait_for(lambda: (p := http.get(PROVIDERS + "/engine").json())["status"] == "READY" and p,
                        timeout=30, what="provider READY")
    assert provider["served_models"] == [{"model_entity_id": f"default/{served}", "served_model_name": served}]
    ours.models.create("default", name="remote-tiny", model_providers=["engine"], api_endpoint={"model_id": served})

    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    answer = oa.chat.completions.create(model="default/remote-tiny", messages=[{"role": "user", "content": "hello"}],
                                        max_tokens=30)
    assert answer.model == "default/remote-tiny"
    assert 1 <= answer.usage.completion_tokens <= 2  # the required max_tokens won over the request's 30
    stream = list(oa.chat.completions.create(model="remote-tiny", messages=[{"role": "user", "content": "hello"}],
                                             stream=True))
    assert stream and {c.model for c in stream} == {"remote-tiny"}

    direct = http.post("/apis/inference-gateway/v2/workspaces/default/provider/engine/-/v1/chat/completions",
                       json={"model": served, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert direct.status_code == 200 and direct.json()["model"] == served
    assert direct.json()["usage"]["completion_tokens"] <= 4

    # the base model's prompt applies on our own endpoint too: its inference_params fill in, the request wins
    ours.models.update("default", "tiny", prompt={"inference_params": {"max_tokens": 1, "temperature": 0}})
    time.sleep(1.2)  # the gateway's route cache lives a second
    short = oa.chat.completions.create(model=served, messages=[{"role": "user", "content": "hello"}])
    assert short.usage.completion_tokens == 1
    longer = oa.chat.completions.create(model=served, messages=[{"role": "user", "content": "hello"}], max_tokens=3)
    assert longer.usage.completion_tokens > 1
