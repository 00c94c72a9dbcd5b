"""The engine over HTTP: the protocol the gateway (and vLLM) speak."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelyard.engine.core import Engine
from modelyard.engine.server import create_engine_app


@pytest.fixture
def http(fixture_models: dict[str, Path]):
    engine = Engine(fixture_models["base"], max_loras=2, max_lora_rank=16, served_name="tiny")
    with TestClient(create_engine_app(engine)) as client:
        yield client
    engine.shutdown()


def _load(http: TestClient, name: str, path: Path):
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})


def test_models_lists_base_and_loaded_adapters(http: TestClient, fixture_models: dict[str, Path]) -> None:
    assert http.get("/health").status_code == 200
    assert _load(http, "pirate", fixture_models["pirate"]).status_code == 200
    data = http.get("/v1/models").json()["data"]
    assert [(m["id"], m["parent"]) for m in data] == [("tiny", None), ("pirate", "tiny")]
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"}).status_code == 200
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny"]


def test_load_errors_are_400_and_unknown_unload_404(http: TestClient, fixture_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(fixture_models["pirate"], broken)
    (broken / "adapter_config.json").unlink()
    response = _load(http, "broken", broken)
    assert response.status_code == 400 and "adapter_config.json" in response.json()["error"]["message"]
    response = http.post("/v1/unload_lora_adapter", json={"lora_name": "ghost"})
    assert response.status_code == 404
    assert http.post("/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400


def test_completion_and_chat_by_adapter_name(http: TestClient, fixture_models: dict[str, Path]) -> None:
    _load(http, "pirate", fixture_models["pirate"])
    body = {"model": "pirate", "prompt": "Tell me about", "max_tokens": 6, "temperature": 0}
    completion = http.post("/v1/completions", json=body).json()
    assert completion["object"] == "text_completion" and completion["model"] == "pirate"
    assert any(word in completion["choices"][0]["text"] for word in ("arr", "mat", "gold", "treasure"))
    assert completion["usage"]["completion_tokens"] == 6
    assert completion["usage"]["total_tokens"] == completion["usage"]["prompt_tokens"] + 6
    base = http.post("/v1/completions", json={**body, "model": "tiny"}).json()
    assert base["choices"][0]["text"] != completion["choices"][0]["text"]
    chat = http.post("/v1/chat/completions", json={
        "model": "pirate", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5, "temperature": 0,
    }).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["finish_reason"] == "length"


def test_unknown_model_is_404(http: TestClient) -> None:
    response = http.post("/v1/completions", json={"model": "ghost", "prompt": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_bad_parameters_are_400(http: TestClient) -> None:
    response = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "temperature": -1})
    assert response.status_code == 400 and "temperature" in response.json()["error"]["message"]


def test_streaming_matches_non_streaming(http: TestClient, fixture_models: dict[str, Path]) -> None:
    _load(http, "chef", fixture_models["chef"])
    body = {"model": "chef", "prompt": "The chef", "max_tokens": 8, "temperature": 0}
    whole = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_without_template_is_400(fixture_models: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(fixture_models["base"], bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    engine = Engine(bare, served_name="bare")
    try:
        with TestClient(create_engine_app(engine)) as http:
            response = http.post("/v1/chat/completions", json={"model": "bare", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 400 and "no chat template" in response.json()["error"]["message"]
    finally:
        engine.shutdown()


def _chat(http: TestClient, **extra):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
            "temperature": 0, **extra}
    return http.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("param, value", [
    ("logprobs", True), ("top_logprobs", 3), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("response_format", {"type": "json_object"}), ("min_p", 0.1), ("ignore_eos", True),
    ("logit_bias", {"999999": 5}), ("best_of", 3),
])
def test_parameters_the_engine_cannot_honour_are_refused_by_name(http: TestClient, param: str, value: object) -> None:
    response = _chat(http, **{param: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"] and isinstance(error["code"], str)


def test_parameters_that_ask_for_nothing_are_accepted(http: TestClient) -> None:
    response = _chat(http, logprobs=False, tools=[], response_format={"type": "text"}, user="me", n=1)
    assert response.status_code == 200, response.text


def test_max_tokens_beyond_the_context_is_refused(http: TestClient) -> None:
    response = _chat(http, max_tokens=10_000)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens" and "context" in response.json()["error"]["message"]
    response = http.post("/v1/completions", json={"model": "tiny", "prompt": list(range(5, 600))})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_n_returns_n_choices_streamed_or_not(http: TestClient) -> None:
    body = {"model": "tiny", "prompt": "Tell me about", "max_tokens": 6, "temperature": 1.0, "seed": 3, "n": 3}
    whole = http.post("/v1/completions", json=body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in whole["choices"]}) > 1  # sampled with a seed per choice
    assert whole["usage"]["completion_tokens"] == 18
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    streamed = ["", "", ""]
    for c in chunks:
        streamed[c["choices"][0]["index"]] += c["choices"][0]["text"]
    assert streamed == [c["text"] for c in whole["choices"]]  # same seeds, same samples


def test_penalties_and_logit_bias_change_greedy_output(http: TestClient) -> None:
    body = {"model": "tiny", "prompt": "one two", "max_tokens": 12, "temperature": 0}
    plain = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 3.0}):
        changed = http.post("/v1/completions", json={**body, **extra}).json()["choices"][0]["text"]
        assert changed != plain, extra
    tokenizer = http.app.state.engine.tokenizer
    token = tokenizer(" treasure", add_special_tokens=False)["input_ids"][0]
    forced = http.post("/v1/completions", json={**body, "max_tokens": 3, "logit_bias": {str(token): 100}}).json()
    assert forced["choices"][0]["text"] == tokenizer.decode([token] * 3)


def test_error_codes_are_strings_or_null(http: TestClient) -> None:
    for response in (
        http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "temperature": -1}),
        http.post("/v1/completions", json={"model": "ghost", "prompt": "hi"}),
        http.post("/v1/unload_lora_adapter", json={"lora_name": "ghost"}),
        _chat(http, n=100),
    ):
        code = response.json()["error"]["code"]
        assert response.status_code >= 400 and (code is None or isinstance(code, str)), response.text
