"""Model providers: the reference's CRUD at /apis/models/v2/workspaces/{ws}/providers (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.client import Modelyard

BASE = "/apis/models/v2/workspaces/default/providers"
KEYS = {"id", "name", "workspace", "project", "created_at", "updated_at", "description", "host_url",
        "api_key_secret_name", "served_models", "enabled_models", "status", "status_message", "default_extra_body",
        "default_extra_headers", "required_extra_body", "required_extra_headers", "model_deployment_id",
        "auth_context", "auth_header_format"}


def _http(client: Modelyard, method: str, path: str, **kwargs: Any) -> Any:
    return client._http.request(method, client.base_url + path, **kwargs)  # type: ignore[attr-defined]


def test_create_get_list_upsert_status_delete(client: Modelyard) -> None:
    created = _http(client, "POST", BASE, json={
        "name": "fake-prov", "host_url": "http://127.0.0.1:9", "default_extra_headers": {"x-extra": "from-provider"}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == KEYS
    assert body["id"].startswith("model-provider-")
    assert (body["status"], body["status_message"], body["served_models"]) == ("CREATED", "Model provider created", [])
    assert body["default_extra_headers"] == {"x-extra": "from-provider"} and body["default_extra_body"] is None

    duplicate = _http(client, "POST", BASE, json={"name": "fake-prov", "host_url": "http://127.0.0.1:9"})
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": "Model provider with workspace 'default' and name 'fake-prov' already exists"}

    got = _http(client, "GET", BASE + "/fake-prov").json()
    assert got["id"] == body["id"] and set(got) == KEYS

    _http(client, "POST", BASE, json={"name": "other", "host_url": "https://api.example.com", "project": "p1"})
    listed = _http(client, "GET", BASE, params={"sort": "-name"}).json()
    assert [p["name"] for p in listed["data"]] == ["other", "fake-prov"]
    assert listed["pagination"]["total_results"] == 2 and listed["sort"] == "-name"
    assert "description" not in listed["data"][0]  # list items drop nulls
    filtered = _http(client, "GET", BASE, params={"filter[project]": "p1"}).json()
    assert [p["name"] for p in filtered["data"]] == ["other"] and filtered["filter"] == {"project": "p1"}
    assert _http(client, "GET", BASE, params={"filter[nope]": "x"}).status_code == 400

    replaced = _http(client, "PUT", BASE + "/fake-prov", json={"host_url": "http://127.0.0.1:8", "description": "d"})
    assert replaced.status_code == 200
    assert replaced.json()["default_extra_headers"] is None  # PUT replaces: what is left out is cleared
    assert replaced.json()["description"] == "d" and replaced.json()["id"] == body["id"]
    upserted = _http(client, "PUT", BASE + "/brand-new", json={"host_url": "http://127.0.0.1:7"})
    assert upserted.status_code == 200 and upserted.json()["name"] == "brand-new"
    assert _http(client, "PUT", BASE + "/Bad--Name", json={"host_url": "http://x"}).status_code == 400

    status = _http(client, "PUT", BASE + "/fake-prov/status", json={
        "status": "READY", "served_models": [{"model_entity_id": "default/m", "served_model_name": "m"}]})
    assert status.status_code == 200
    assert status.json()["served_models"] == [{"model_entity_id": "default/m", "served_model_name": "m"}]
    assert (status.json()["status"], status.json()["status_message"]) == ("READY", "")

    assert _http(client, "DELETE", BASE + "/fake-prov").status_code == 204
    assert _http(client, "GET", BASE + "/fake-prov").status_code == 404
    assert _http(client, "DELETE", BASE + "/fake-prov").status_code == 404
    assert _http(client, "GET", "/apis/models/v2/workspaces/nope/providers").status_code == 404


@pytest.mark.parametrize("url", ["ftp://host/x", "http://user:pw@host", "host:8000", "http://", "file:///etc/passwd",
                                 "http://host/ x"])
def test_host_url_must_be_plain_http(client: Modelyard, url: str) -> None:
    response = _http(client, "POST", BASE, json={"name": "p1", "host_url": url})
    assert response.status_code == 400, response.text
    assert "host_url" in response.json()["detail"] and ":pw@" not in response.text


@pytest.mark.parametrize("template", ["{{ nope }}", "Bearer {{ secret", "Bearer", "{{ secret.__class__.__mro__ }}",
                                      "X: {{ auth_secret }}\nY: z"])
def test_a_template_that_cannot_render_is_400_at_create_and_upsert(client: Modelyard, template: str) -> None:
    response = _http(client, "POST", BASE, json={"name": "p1", "host_url": "http://h", "auth_header_format": template})
    assert response.status_code == 400, response.text
    assert "auth_header_format" in response.json()["detail"]
    upsert = _http(client, "PUT", BASE + "/p1", json={"host_url": "http://h", "auth_header_format": template})
    assert upsert.status_code == 400
    assert _http(client, "GET", BASE + "/p1").status_code == 404


def test_templates_that_render(client: Modelyard) -> None:
    for i, template in enumerate(["Bearer {{ secret }}", "x-api-key: {{ auth_secret }}", "Authorization: Token {{auth_secret}}"]):
        response = _http(client, "POST", BASE, json={"name": f"p{i}x", "host_url": "http://h", "auth_header_format": template})
        assert response.status_code == 201, response.text


def test_unknown_fields_and_missing_host_are_422(client: Modelyard) -> None:
    assert _http(client, "POST", BASE, json={"name": "p1"}).status_code == 422
    assert _http(client, "POST", BASE, json={"name": "p1", "host_url": "http://h", "api_key": "x"}).status_code == 422
