"""/metrics after known traffic through a real engine replica, parsed with prometheus_client's parser;
request ids on answers, on the engine's side and in the log lines; metrics off or behind a key."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from together import Together

from modelyard.app import create_app
from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import AUTH, TRUSTED, admin_key
from tests.endpoints.test_serving import PROMPT, start_endpoint
from tests.engine.test_metrics import parse, value


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'metrics.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def test_gateway_traffic_is_counted_by_endpoint_adapter_and_outcome(
        app: FastAPI, registry: tuple[Modelyard, Together], live_server: str,
        caplog: pytest.LogCaptureFixture) -> None:
    _, tg = registry
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    oa = openai.OpenAI(base_url=live_server + "/v1", api_key=AUTH()["Authorization"][7:], max_retries=0)
    caplog.set_level(logging.INFO, logger="modelyard")
    usage = [oa.chat.completions.create(model=model, messages=PROMPT, max_tokens=6, temperature=0).usage
             for model in (endpoint.name, "pirate", "pirate")]
    chunks = list(oa.chat.completions.create(model="pirate", messages=PROMPT, max_tokens=5, temperature=0,
                                             stream=True))
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for the usage chunk
    streamed = sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="ghost", messages=PROMPT)
    raw = httpx.post(live_server + "/v1/chat/completions", headers={**AUTH(), "X-Request-ID": "trace-42"},
                     json={"model": "pirate", "messages": PROMPT, "max_tokens": 2}, timeout=30)
    assert raw.status_code == 200 and raw.headers["x-request-id"] == "trace-42"

    samples = parse(httpx.get(live_server + "/metrics", timeout=30).text)
    key = {"workspace": "default", "endpoint": endpoint.name}
    assert value(samples, "modelyard_gateway_requests_total", **key, model="pirate", outcome="ok") == 4
    assert value(samples, "modelyard_gateway_requests_total", **key, model=endpoint.name, outcome="ok") == 1
    assert value(samples, "modelyard_gateway_requests_total", model="ghost") == 0  # typed names are no labels
    assert value(samples, "modelyard_gateway_completion_tokens_total", **key, model="pirate") == \
        usage[1].completion_tokens + usage[2].completion_tokens + 5 + 2
    assert value(samples, "modelyard_gateway_prompt_tokens_total", **key, model=endpoint.name) == \
        usage[0].prompt_tokens
    assert value(samples, "modelyard_gateway_time_to_first_token_seconds_count", **key, model="pirate") == 1
    assert streamed >= 1
    assert value(samples, "modelyard_http_requests_total", route="/v1/chat/completions", method="POST",
                 status="200") == 5
    assert value(samples, "modelyard_http_requests_total", route="/v1/chat/completions", status="404") == 1
    assert value(samples, "modelyard_http_request_duration_seconds_count", route="/v1/endpoints/{endpoint_id}",
                 method="GET") >= 1
    assert value(samples, "modelyard_replicas", **key, state="ready") == 1
    assert value(samples, "modelyard_requests_in_flight", **key) == 0
    assert value(samples, "modelyard_adapter_loads_total", endpoint=endpoint.name, outcome="ok") >= 1
    assert value(samples, "modelyard_attach_duration_seconds_count", action="attach", outcome="ok") == 1
    assert all(len(labels.get("route", "")) < 80 for labels, _ in samples["modelyard_http_requests_total"])

    # the engine counted what the gateway counted, under vLLM's names
    replica = app.state.supervisor.pools[endpoint.id].replicas[0].url
    engine = parse(httpx.get(replica + "/metrics", timeout=30).text)
    assert value(engine, "vllm:generation_tokens_total") == sum(
        value(samples, "modelyard_gateway_completion_tokens_total", **key, model=m) for m in ("pirate", endpoint.name))

    # and the usage records: per model, this minute, tokens included (the stream's too)
    rows = httpx.get(live_server + "/v1/usage", params={"granularity": "minute"}, headers=AUTH(),
                     timeout=30).json()["data"]
    pirate = [r for r in rows if r["model"] == "pirate"]
    assert sum(r["requests"] for r in pirate) == 4 and sum(r["errors"] for r in pirate) == 0
    assert sum(r["completion_tokens"] for r in pirate) == \
        value(samples, "modelyard_gateway_completion_tokens_total", **key, model="pirate")
    assert all(r["endpoint_id"] == endpoint.id and r["latency_ms"]["p50"] > 0 for r in pirate)
    assert sum(r["requests"] for r in rows if r["model"] == endpoint.name) == 1

    lines = [r for r in caplog.records if r.getMessage() == "request" and getattr(r, "request_id", None) == "trace-42"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.endpoint, line.model, line.replica, line.status) == (endpoint.name, "pirate", replica, 200)
    assert line.completion_tokens == 2 and line.prompt_tokens > 0
    others = [r for r in caplog.records if r.getMessage() == "request" and r.path == "/v1/models"]
    assert all(len(r.request_id) == 32 for r in others)


def test_metrics_off_and_behind_a_key(tmp_path: Path) -> None:
    base = {"home": tmp_path / "home", "database_url": f"sqlite:///{tmp_path / 'm.db'}"}
    with TestClient(create_app(Settings(**base, metrics="off"))) as http:
        assert http.get("/metrics").status_code == 404
        assert "/metrics" not in http.get("/openapi.json").json()["paths"]
    settings = Settings(**base, metrics_require_key=True)
    with TestClient(create_app(settings)) as http:
        assert http.get("/metrics").status_code == 401
        response = http.get("/metrics", headers={"Authorization": f"Bearer {admin_key(settings)}"})
        assert response.status_code == 200 and "modelyard_http_requests_total" in response.text
    with TestClient(create_app(Settings(**base))) as http:
        http.get("/health")
        samples = parse(http.get("/metrics").text)
        assert value(samples, "modelyard_http_requests_total", route="/health", status="200") == 1
        assert value(samples, "modelyard_http_requests_total", route="/metrics") == 0  # scrapes are not counted
        assert http.get("/nowhere").status_code in (401, 404)
        assert value(parse(http.get("/metrics").text), "modelyard_http_requests_total", route="<unmatched>") == 1


def test_request_ids_are_made_or_taken_when_sane(client: Modelyard) -> None:
    made = client._http.get(client.base_url + "/health").headers["x-request-id"]
    assert len(made) == 32
    assert client._http.get(client.base_url + "/health", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"
    for bad in ("x" * 200, "has space"):
        got = client._http.get(client.base_url + "/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32
