"""Gateway routing without engines: name resolution errors, endpoints that are not running, SSE rewriting.
(Routing to running engines is in tests/endpoints/test_serving.py.)"""

from __future__ import annotations

import json

from together import Together

from modelyard.client import Modelyard
from modelyard.gateway.router import _rewrite
from tests.endpoints.test_router import _stopped


def test_unknown_model_through_the_gateway_is_404(registry: tuple[Modelyard, Together]) -> None:
    ours, _ = registry
    response = ours._http.post(ours.base_url + "/v1/chat/completions",
                               json={"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "The model `ghost` does not exist.",
                                         "type": "invalid_request_error", "code": "model_not_found"}}


def test_stopped_endpoint_answers_503_with_retry_after(registry: tuple[Modelyard, Together]) -> None:
    ours, tg = registry
    endpoint = _stopped(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    for model in ("pirate", f"{endpoint.name}:pirate", endpoint.name):
        response = ours._http.post(ours.base_url + "/v1/completions", json={"model": model, "prompt": "hi"})
        assert response.status_code == 503 and response.headers["retry-after"] == "5", model
        assert response.json()["error"]["code"] == "endpoint_not_ready"
    models = ours._http.get(ours.base_url + "/v1/models").json()["data"]
    assert {(m["id"], m["parent"]) for m in models} == {(endpoint.name, None), ("pirate", endpoint.name)}


def test_sse_lines_get_the_requested_model_name() -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "pirate", "choices": []}
    assert json.loads(_rewrite("data: " + json.dumps(chunk), "ep:pirate")[6:])["model"] == "ep:pirate"
    assert _rewrite("data: [DONE]", "x") == "data: [DONE]"
    assert _rewrite("", "x") == ""
    assert _rewrite("data: {not json", "x") == "data: {not json"
