"""Gateway routing without engines: name resolution errors, endpoints that are not running, SSE rewriting.
(Routing to running engines is in tests/endpoints/test_serving.py.)"""

from __future__ import annotations

import json

from together import Together

from modelyard.client import Modelyard
from modelyard.gateway.router import _openai_error
from modelyard.gateway.sse import EventWatch
from tests.endpoints.test_router import _stopped


def test_unknown_model_through_the_gateway_is_404(registry: tuple[Modelyard, Together]) -> None:
    ours, _ = registry
    response = ours._http.post(ours.base_url + "/v1/chat/completions",
                               json={"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "The model `ghost` does not exist.",
                                         "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


def test_validation_errors_have_a_string_code_and_name_the_param(registry: tuple[Modelyard, Together]) -> None:
    ours, _ = registry
    for body in ({"model": "ghost"}, {"model": 3}, [1, 2]):
        response = ours._http.post(ours.base_url + "/v1/chat/completions", json=body)
        error = response.json()["error"]
        assert response.status_code in (400, 404) and isinstance(error["code"], str), response.text
    response = ours._http.post(ours.base_url + "/v1/endpoints", json={"model": "tiny", "hardware": 3})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_request" and error["param"] == "hardware"


def test_engine_errors_are_passed_on_with_a_string_code() -> None:
    vllm_style = json.dumps({"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}})
    assert json.loads(_openai_error(vllm_style.encode(), 400))["error"] == {
        "message": "bad", "type": "BadRequestError", "param": None, "code": "invalid_request"}
    assert json.loads(_openai_error(b"Internal Server Error", 500))["error"]["code"] == "engine_error"


def test_stopped_endpoint_says_how_to_start_it_and_no_retry_after(registry: tuple[Modelyard, Together]) -> None:
    ours, tg = registry
    endpoint = _stopped(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    for model in ("pirate", f"{endpoint.name}:pirate", endpoint.name):
        response = ours._http.post(ours.base_url + "/v1/completions", json={"model": model, "prompt": "hi"})
        assert response.status_code == 503 and "retry-after" not in response.headers, model
        error = response.json()["error"]
        assert error["code"] == "endpoint_stopped" and "retry" not in error["message"]
        assert f"modelyard endpoints start {endpoint.id}" in error["message"]
    models = ours._http.get(ours.base_url + "/v1/models").json()["data"]
    assert {(m["id"], m["parent"]) for m in models} == {(endpoint.name, None), ("pirate", endpoint.name)}


def test_sse_lines_get_the_requested_model_name() -> None:
    watch = EventWatch("ep:pirate")
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "pirate", "choices": []}
    assert json.loads(watch.line(b"data: " + json.dumps(chunk).encode() + b"\n")[6:])["model"] == "ep:pirate"
    assert not watch.done
    assert watch.line(b"data: [DONE]\n") == b"data: [DONE]\n" and watch.done
    assert watch.line(b"\n") == b"\n"
    assert watch.line(b"data: {not json\n") == b"data: {not json\n"


def test_the_usage_chunk_is_counted_and_passed_on_only_when_asked() -> None:
    class Call:
        first = None
        prompt_tokens = completion_tokens = 0

        def tokens(self, usage: dict) -> None:
            self.prompt_tokens, self.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]

        def first_token(self) -> None:
            self.first = 1

    usage = b'data: {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n'
    token = b'data: {"model": "m", "choices": [{"delta": {"content": "hi"}}]}\n'
    for asked in (True, False):
        call = Call()
        watch = EventWatch("asked", call, pass_usage=asked)  # type: ignore[arg-type]
        assert watch.line(token) is not None and call.first == 1
        assert (watch.line(usage) is not None) is asked
        assert (call.prompt_tokens, call.completion_tokens) == (3, 2)


def test_an_unknown_workspace_is_404_not_an_empty_list(registry: tuple[Modelyard, Together]) -> None:
    ours, _ = registry
    headers = {"X-Modelyard-Workspace": "no-such-team"}
    for path in ("/v1/models", "/v1/endpoints"):
        response = ours._http.get(ours.base_url + path, headers=headers)
        assert response.status_code == 404 and response.json()["error"]["code"] == "workspace_not_found", path
    response = ours._http.get(ours.base_url + "/apis/inference-gateway/v2/workspaces/no-such-team/openai/-/v1/models")
    assert response.status_code == 404
