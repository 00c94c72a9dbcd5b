"""Gateway routing without engines: name resolution errors, endpoints that are not running, SSE rewriting.
(Routing to running engines is in tests/endpoints/test_serving.py.)"""

from __future__ import annotations

import json

from together import Together

from modelyard.client import Modelyard
from modelyard.gateway.router import _openai_error
from modelyard.gateway.sse import with_model as _rewrite
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
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "pirate", "choices": []}
    assert json.loads(_rewrite("data: " + json.dumps(chunk), "ep:pirate")[6:])["model"] == "ep:pirate"
    assert _rewrite("data: [DONE]", "x") == "data: [DONE]"
    assert _rewrite("", "x") == ""
    assert _rewrite("data: {not json", "x") == "data: {not json"


def test_an_unknown_workspace_is_404_not_an_empty_list(registry: tuple[Modelyard, Together]) -> None:
    ours, _ = registry
    headers = {"X-Modelyard-Workspace": "no-such-team"}
    for path in ("/v1/models", "/v1/endpoints"):
        response = ours._http.get(ours.base_url + path, headers=headers)
        assert response.status_code == 404 and response.json()["error"]["code"] == "workspace_not_found", path
    response = ours._http.get(ours.base_url + "/apis/inference-gateway/v2/workspaces/no-such-team/openai/-/v1/models")
    assert response.status_code == 404
