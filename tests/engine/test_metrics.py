"""The built-in engine's /metrics: vLLM's names and labels, counted from real requests, parsed with
prometheus_client's own parser (what Prometheus and tools built for vLLM read)."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelyard.engine.core import Generation, SamplingParams
from tests.engine.test_server import http

__all__ = ["http"]


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Prometheus' text format, read with prometheus_client's own parser: sample name → (labels, value)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items()))


def scrape(http: TestClient) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_counts_tokens_and_latencies_under_vllm_names(http: TestClient, fixture_models: dict[str, Path]) -> None:
    before = scrape(http)
    assert value(before, "vllm:num_requests_running", model_name="tiny") == 0
    assert value(before, "vllm:num_requests_waiting", model_name="tiny") == 0
    assert value(before, "vllm:generation_tokens_total", model_name="tiny") == 0
    http.post("/v1/load_lora_adapter", json={"lora_name": "pirate", "lora_path": str(fixture_models["pirate"])})
    usage = [http.post("/v1/completions", json={"model": model, "prompt": "Tell me about", "max_tokens": 5,
                                                "temperature": 0}).json()["usage"]
             for model in ("tiny", "pirate", "pirate")]
    with http.stream("POST", "/v1/completions", json={"model": "pirate", "prompt": "Hi", "max_tokens": 4,
                                                        "stream": True, "temperature": 0}) as response:
        list(response.iter_lines())
    after = scrape(http)
    prompt = sum(u["prompt_tokens"] for u in usage) + len(http.app.state.engine.tokenizer("Hi")["input_ids"])
    assert value(after, "vllm:prompt_tokens_total", model_name="tiny") == prompt
    assert value(after, "vllm:generation_tokens_total", model_name="tiny") == 5 * 3 + 4
    assert value(after, "vllm:request_success_total", model_name="tiny", finished_reason="length") == 4
    assert value(after, "vllm:time_to_first_token_seconds_count", model_name="tiny") == 4
    assert value(after, "vllm:e2e_request_latency_seconds_count", model_name="tiny") == 4
    assert value(after, "vllm:request_generation_tokens_sum", model_name="tiny") == 19
    # one interval between each pair of visible tokens (held-back bytes merge two into one)
    assert 4 <= value(after, "vllm:inter_token_latency_seconds_count", model_name="tiny") <= 15
    info = after["vllm:lora_requests_info"]
    assert len(info) == 1 and info[0][0] == {"max_lora": "2", "waiting_lora_adapters": "",
                                             "running_lora_adapters": ""}
    assert value(after, "modelyard_engine_lora_loaded", model_name="tiny") == 1


def test_lora_info_names_running_adapters(http: TestClient, fixture_models: dict[str, Path]) -> None:
    """While an adapter's request is being generated, the gauges count it and the info gauge names it.
    The request's second event (a decode step's; the first comes from its prefill) holds the engine
    thread until the scrape is done, so the request is in the running batch then."""
    http.post("/v1/load_lora_adapter", json={"lora_name": "chef", "lora_path": str(fixture_models["chef"])})
    engine = http.app.state.engine
    first, release, done = threading.Event(), threading.Event(), threading.Event()
    events: list[tuple] = []

    def emit(event: tuple) -> None:
        events.append(event)
        if len(events) == 2 and event[0] == "text":
            first.set()
            release.wait(30)
        if event[0] == "done":
            done.set()

    engine.submit(Generation(engine.tokenizer("The chef")["input_ids"], "chef", SamplingParams(max_tokens=12, temperature=0.0), emit))
    try:
        assert first.wait(30)
        samples = scrape(http)
    finally:
        release.set()
    assert done.wait(30)
    assert value(samples, "vllm:num_requests_running", model_name="tiny") == 1
    (labels, stamp), = samples["vllm:lora_requests_info"]
    assert labels == {"max_lora": "2", "waiting_lora_adapters": "", "running_lora_adapters": "chef"}
    assert stamp > 1.7e9  # the scrape's time, as vLLM sets it
    assert value(samples, "modelyard_engine_lora_resident", model_name="tiny") == 1
    assert value(scrape(http), "vllm:num_requests_running", model_name="tiny") == 0


def test_request_id_is_echoed(http: TestClient) -> None:
    response = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1},
                         headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "abc-123"
    assert "x-request-id" not in http.get("/health").headers


def test_slot_loads_and_evictions_are_counted(http: TestClient, fixture_models: dict[str, Path]) -> None:
    """Three adapters through two slots, one at a time: the third pushes out the least recently used."""
    for name in ("pirate", "chef", "space"):
        http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(fixture_models[name])})
    for name in ("pirate", "chef", "space", "pirate"):
        assert http.post("/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 1}).status_code == 200
    samples = scrape(http)
    assert value(samples, "modelyard_engine_lora_slot_loads_total", model_name="tiny") == 4
    assert value(samples, "modelyard_engine_lora_evictions_total", model_name="tiny") == 2
    assert value(samples, "modelyard_engine_lora_resident", model_name="tiny") == 2


def test_prefix_cache_hits_are_counted_and_reported_in_usage(http: TestClient) -> None:
    """A prompt sent twice: the second reads its full blocks from the prefix cache, says so in
    ``usage.prompt_tokens_details.cached_tokens`` (as OpenAI and vLLM do) and in vLLM's counters."""
    before = scrape(http)
    prompt = "The quick brown fox jumps over the lazy dog, " * 8
    usage = [http.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2,
                                                "temperature": 0}).json()["usage"] for _ in range(2)]
    block = http.app.state.engine.prefix.block
    tokens = usage[0]["prompt_tokens"]
    assert tokens > 2 * block
    assert usage[0]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage[1]["prompt_tokens_details"] == {"cached_tokens": (tokens - 1) // block * block}
    after = scrape(http)
    hits = value(after, "vllm:prefix_cache_hits_total", model_name="tiny") - value(
        before, "vllm:prefix_cache_hits_total", model_name="tiny")
    queries = value(after, "vllm:prefix_cache_queries_total", model_name="tiny") - value(
        before, "vllm:prefix_cache_queries_total", model_name="tiny")
    assert hits == (tokens - 1) // block * block and queries == 2 * tokens
