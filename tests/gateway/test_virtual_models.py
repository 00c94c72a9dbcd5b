"""Virtual models: CRUD in the reference's shape (db_version, expected_db_version), what they may point
at, who may change them, and the gateway routing a virtual model's name to its targets by weight
(against registry models whose api_endpoint is a recording upstream; SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from modelyard.client import Modelyard
from tests.conftest import AUTH, as_user
from tests.providers.upstream import Recorder, recording_upstream

VMS = "/apis/inference-gateway/v2/workspaces/{ws}/virtual-models"
MODELS = "/apis/models/v2/workspaces/{ws}/models"
IGW = "/apis/inference-gateway/v2/workspaces/default/openai/-"
CHAT = {"messages": [{"role": "user", "content": "ahoy"}], "max_tokens": 1}


def _vms(ws: str = "default") -> str:
    return VMS.format(ws=ws)


def _direct(http: Any, ws: str, name: str, url: str, model_id: str) -> None:
    """A registry model the gateway can call: its api_endpoint is ``url``."""
    response = http.post(MODELS.format(ws=ws), json={
        "name": name, "api_endpoint": {"url": url + "/v1", "model_id": model_id, "format": "openai"}})
    assert response.status_code == 201, response.text


def test_crud_in_the_reference_shape(client: Modelyard) -> None:
    http = client._http
    _direct(http, "default", "pirate-v1", "http://127.0.0.1:9", "p1")
    _direct(http, "default", "pirate-v2", "http://127.0.0.1:9", "p2")
    created = http.post(_vms(), json={"name": "pirate", "default_model_entity": "default/pirate-v1"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) >= {"name", "workspace", "project", "default_model_entity", "autoprovisioned", "models",
                         "request_middleware", "response_middleware", "post_response_middleware", "override_proxy",
                         "guardrail_config_ids", "id", "created_at", "created_by", "updated_at", "updated_by",
                         "entity_id", "parent", "db_version"}
    assert body["id"].startswith("virtual-model-") and body["entity_id"] == body["id"]
    assert (body["db_version"], body["autoprovisioned"], body["models"], body["parent"]) == (1, False, [], None)
    assert body["request_middleware"] == [] and body["guardrail_config_ids"] == []

    assert http.post(_vms(), json={"name": "pirate", "default_model_entity": "pirate-v1"}).status_code == 409
    assert http.get(f"{_vms()}/pirate").json() == body
    assert http.get(f"{_vms()}/nope").status_code == 404

    http.post(_vms(), json={"name": "parrot", "targets": [{"model": "pirate-v1", "weight": 3},
                                                          {"model": "default/pirate-v2", "weight": 1}]})
    listed = http.get(_vms()).json()
    assert [vm["name"] for vm in listed["data"]] == ["parrot", "pirate"]  # newest first
    assert listed["pagination"]["page_size"] == 20 and listed["sort"] == "-created_at"
    assert "project" not in listed["data"][1] and "override_proxy" not in listed["data"][1]  # list items drop nulls
    assert [vm["name"] for vm in http.get(_vms(), params={"filter[name]": "pirate"}).json()["data"]] == ["pirate"]
    assert [vm["name"] for vm in http.get(_vms("-")).json()["data"]] == ["parrot", "pirate"]

    patched = http.patch(f"{_vms()}/pirate", json={"targets": [{"model": "pirate-v1", "weight": 90},
                                                               {"model": "pirate-v2", "weight": 10}]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["db_version"] == 2
    assert patched.json()["default_model_entity"] == "default/pirate-v1"  # fields not sent are kept
    assert patched.json()["targets"] == [{"model": "pirate-v1", "weight": 90}, {"model": "pirate-v2", "weight": 10}]

    stale = http.delete(f"{_vms()}/pirate", params={"expected_db_version": 1})
    assert stale.status_code == 409 and stale.json()["detail"] == "Concurrent modification - please retry."
    assert http.get(f"{_vms()}/pirate").status_code == 200
    assert http.delete(f"{_vms()}/pirate", params={"expected_db_version": 2}).status_code == 204
    assert http.delete(f"{_vms()}/parrot").status_code == 204
    assert http.get(f"{_vms()}/pirate").status_code == 404
    assert http.get(_vms()).json()["data"] == []


def test_what_a_virtual_model_may_point_at(client: Modelyard) -> None:
    http = client._http
    _direct(http, "default", "pirate-v1", "http://127.0.0.1:9", "p1")

    def refused(body: dict[str, Any], *words: str, method: str = "POST", path: str = "") -> None:
        response = http.request(method, _vms() + path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert all(word in response.json()["detail"] for word in words), response.text

    refused({"name": "vm", "targets": []}, "targets must not be empty")
    refused({"name": "vm"}, "default_model_entity or targets")
    refused({"name": "vm", "targets": [{"model": "pirate-v1", "weight": 0}]}, "pirate-v1", "positive integer")
    refused({"name": "vm", "targets": [{"model": "pirate-v1", "weight": -3}]}, "positive integer")
    refused({"name": "vm", "targets": [{"model": "pirate-v1", "weight": 1.5}]}, "positive integer")
    refused({"name": "vm", "targets": [{"model": "pirate-v1"}, {"model": "ghost-v9", "weight": 2}]}, "'ghost-v9'")
    refused({"name": "vm", "default_model_entity": "default/ghost"}, "'default/ghost'")
    refused({"name": "vm", "default_model_entity": "pirate-v1", "request_middleware": [
        {"name": "x", "config_type": "y"}]}, "request_middleware")
    assert http.post(_vms(), json={"name": "Bad_Name", "default_model_entity": "pirate-v1"}).status_code == 422

    assert http.post(_vms(), json={"name": "inner", "default_model_entity": "pirate-v1"}).status_code == 201
    refused({"name": "outer", "targets": [{"model": "inner"}]}, "'inner'", "virtual model")
    refused({"name": "outer", "default_model_entity": "default/inner"}, "virtual model")
    # a virtual model may carry the name of what it points at (a passthrough)
    assert http.post(_vms(), json={"name": "pirate-v1", "default_model_entity": "pirate-v1"}).status_code == 201
    refused({"targets": [{"model": "ghost"}]}, "'ghost'", method="PATCH", path="/inner")
    refused({"targets": []}, "targets must not be empty", method="PATCH", path="/inner")
    assert http.get(f"{_vms()}/inner").json()["db_version"] == 1  # refused changes change nothing


def test_a_viewer_cannot_change_virtual_models(client: Modelyard) -> None:
    client.workspaces.create("team")
    http = client._http
    _direct(http, "team", "pirate-v1", "http://127.0.0.1:9", "p1")
    assert http.post(_vms("team"), json={"name": "pirate", "default_model_entity": "pirate-v1"}).status_code == 201
    viewer = as_user(client, "viewer@x", {"team": "Viewer"})
    editor = as_user(client, "editor@x", {"team": "Editor"})

    def send(user: Modelyard, method: str, path: str, body: Any = None) -> httpx.Response:
        return http.request(method, _vms("team") + path, json=body,
                            headers={"Authorization": f"Bearer {user.api_key}"})

    assert send(viewer, "GET", "/pirate").status_code == 200
    refused = send(viewer, "POST", "", {"name": "parrot", "default_model_entity": "pirate-v1"})
    assert refused.status_code == 403 and "Editor" in refused.text
    assert send(viewer, "PATCH", "/pirate", {"default_model_entity": "team/pirate-v1"}).status_code == 403
    assert send(viewer, "DELETE", "/pirate").status_code == 403
    assert send(editor, "POST", "", {"name": "parrot", "default_model_entity": "pirate-v1"}).status_code == 201
    assert send(editor, "DELETE", "/parrot").status_code == 204
    assert [vm["name"] for vm in send(viewer, "GET", "").json()["data"]] == ["pirate"]


@pytest.fixture
def upstream() -> Iterator[tuple[Recorder, str]]:
    with recording_upstream(("up-v1", "up-v2")) as pair:
        yield pair


def test_the_gateway_splits_traffic_by_weight(live_server: str, upstream: tuple[Recorder, str]) -> None:
    recorder, url = upstream
    with httpx.Client(base_url=live_server, headers=AUTH(), timeout=30) as http:
        _direct(http, "default", "pirate-v1", url, "up-v1")
        _direct(http, "default", "pirate-v2", url, "up-v2")
        created = http.post(_vms(), json={"name": "pirate", "targets": [{"model": "pirate-v1", "weight": 90},
                                                                        {"model": "default/pirate-v2", "weight": 10}]})
        assert created.status_code == 201, created.text

        def ask(i: int) -> str:
            path = "/v1/chat/completions" if i % 2 else IGW + "/v1/chat/completions"
            model = "pirate" if i % 3 else "default/pirate"
            response = http.post(path, json={"model": model, **CHAT})
            assert response.status_code == 200, response.text
            assert response.json()["model"] == model  # the client gets the virtual model's name back
            return model

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, range(1000)))
        served = Counter(r["body"]["model"] for r in recorder.requests if r["path"] == "/v1/chat/completions")
        assert sum(served.values()) == 1000
        # 10% of 1000: mean 100, standard deviation about 9.5; 57..143 is beyond 4.5 of them
        assert 57 <= served["up-v2"] <= 143, served

        ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert {"default/pirate", "default/pirate-v1"} <= ids

        # move all traffic to v2: clients keep model="pirate"
        moved = http.patch(f"{_vms()}/pirate", json={"targets": [{"model": "pirate-v2", "weight": 1}]})
        assert moved.status_code == 200, moved.text
        recorder.requests.clear()
        for _ in range(20):
            assert http.post("/v1/chat/completions", json={"model": "pirate", **CHAT}).json()["model"] == "pirate"
        assert {r["body"]["model"] for r in recorder.requests} == {"up-v2"}

        streamed = http.post("/v1/chat/completions", json={"model": "pirate", "stream": True, **CHAT})
        assert '"model": "pirate"' in streamed.text or '"model":"pirate"' in streamed.text

        assert http.delete(f"{_vms()}/pirate").status_code == 204
        gone = http.post("/v1/chat/completions", json={"model": "pirate", **CHAT})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
