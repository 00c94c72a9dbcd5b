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
