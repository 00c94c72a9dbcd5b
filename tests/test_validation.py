"""The validation boundary: hostile or careless input is a 4xx, never a 500, on SQLite and PostgreSQL.

One regression test per reported case (issue 11, "One validation boundary for untrusted input").
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import authorize, make_fileset

WS = "/apis/entities/v2/workspaces"
MODELS = "/apis/models/v2/workspaces/default/models"
FILESETS = "/apis/files/v2/workspaces/default/filesets"


def http(client: Modelyard) -> httpx.Client:
    return client._http


def post_json(client: Modelyard, path: str, raw: bytes | str) -> httpx.Response:
    body = raw.encode() if isinstance(raw, str) else raw
    return http(client).post(path, content=body, headers={"content-type": "application/json"})


def assert_client_error(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    response.json()  # the error body itself is valid JSON


# ----- integers and timestamps in the query string ------------------------------------------------


@pytest.mark.parametrize("page", ["99999999999999999999", str(2**62), "1000001"])
def test_huge_page_numbers_are_422(client: Modelyard, page: str) -> None:
    for path in (WS, MODELS, "/apis/models/v2/workspaces/-/adapters", FILESETS):
        assert_client_error(http(client).get(path, params={"page": page}), 422)


def test_page_bounds_are_in_the_openapi(client: Modelyard) -> None:
    params = http(client).get("/openapi.json").json()["paths"]["/apis/models/v2/workspaces/{workspace}/models"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in params}
    assert by_name["page"]["maximum"] == 1_000_000 and by_name["page_size"]["maximum"] == 1000


def test_the_last_allowed_page_is_empty_not_an_error(client: Modelyard) -> None:
    response = http(client).get(MODELS, params={"page": "1000000", "page_size": "1000"})
    assert response.status_code == 200 and response.json()["data"] == []


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_timestamp_filter_that_overflows_in_utc_is_a_bad_filter(client: Modelyard, moment: str) -> None:
    response = http(client).get(MODELS, params={"filter[created_at][$gte]": moment})
    assert_client_error(response, 400, 422)
    assert "9999" in response.json()["detail"] or "1-9999" in response.json()["detail"]


def test_timestamp_filter_is_normalised_to_utc(client: Modelyard) -> None:
    client.workspaces.create("tz")
    assert http(client).get(WS, params={"filter[created_at][$gte]": "2000-01-01T10:00:00+14:00"}).json()["data"]
    assert not http(client).get(WS, params={"filter[created_at][$gte]": "9999-01-01T00:00:00-14:00"}).json()["data"]


def test_in_filters_take_at_most_1000_values(client: Modelyard) -> None:
    many = ",".join(f"n{i}" for i in range(5000))
    for op in ("$in", "$nin"):
        response = http(client).get(MODELS, params={f"filter[name][{op}]": many})
        assert_client_error(response, 400)
        assert "at most 1000" in response.json()["detail"]
    assert http(client).get(MODELS, params={"filter[name][$in]": ",".join(f"n{i}" for i in range(1000))}).status_code == 200


# ----- control characters in names, paths and filters ---------------------------------------------


@pytest.mark.parametrize("path", [
    f"{WS}/a%00b", f"{MODELS}/ti%00ny", f"{FILESETS}/fs%00x", f"{FILESETS}/fs/-/a%00b.txt", f"{WS}/ab%0A",
])
def test_nul_and_control_characters_in_the_url_path_are_400(client: Modelyard, path: str) -> None:
    for method in ("GET", "DELETE"):
        assert_client_error(http(client).request(method, path), 400)


@pytest.mark.parametrize("path", [f"{WS}/{'w' * 5000}", f"{MODELS}/{'m' * 201}", f"/v1/endpoints/{'e' * 300}"])
def test_long_names_in_the_url_are_not_echoed(client: Modelyard, path: str) -> None:
    response = http(client).get(path)
    assert_client_error(response, 400, 404)
    assert len(response.text) < 400


def test_nul_in_a_file_upload_path_is_400(client: Modelyard) -> None:
    make_fileset(client, "default/fs")
    response = http(client).put(f"{FILESETS}/fs/-/a%00b.txt", content=b"x",
                                headers={"content-type": "application/octet-stream"})
    assert_client_error(response, 400)


@pytest.mark.parametrize("params", [
    {"filter[name]": "a\x00b"}, {"filter[name][$like]": "\x00"}, {"filter[name][$in]": "a,\x00"},
    {"filter[created_at]": "2024-01-01\x00"}, {"filter[na\x00me]": "x"}, {"sort": "name\x00"},
])
def test_nul_in_filters_and_query_parameters_is_400(client: Modelyard, params: dict[str, str]) -> None:
    for path in (WS, MODELS, FILESETS):
        assert_client_error(http(client).get(path, params=params), 400)


@pytest.mark.parametrize("name", ["ab\x00", "a\x00b", "ab\n", "ab\t", "ab\x7f"])
def test_control_characters_in_names_are_rejected(client: Modelyard, name: str) -> None:
    assert_client_error(http(client).post(WS, json={"name": name}), 422)
    assert sorted(w.name for w in client.workspaces.list()) == ["default", "system"]


# ----- JSON bodies: NUL, NaN, depth, size ---------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"name": "ok-ws", "description": "a\x00b"},
    {"name": "ok-ws", "description": None, "\x00": 1},
])
def test_nul_in_json_strings_is_422(client: Modelyard, body: dict[str, object]) -> None:
    response = http(client).post(WS, json=body)
    assert_client_error(response, 422)
    assert "NUL" in json.dumps(response.json())


def test_nul_in_nested_json_is_422_on_every_registry_route(client: Modelyard) -> None:
    make_fileset(client, "default/fs")
    bad = {"custom_fields": {"deep": ["ok", "bad\x00"]}}
    assert_client_error(http(client).post(MODELS, json={"name": "m1", **bad}), 422)
    assert_client_error(http(client).patch(f"{FILESETS}/fs", json=bad), 422)
    assert_client_error(http(client).post(FILESETS, json={"name": "fs2", "metadata": {"k": "\x00"}}), 422)
    assert client.models.list("default").pagination.total_results == 0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_in_json_are_422(client: Modelyard, constant: str) -> None:
    raw = '{"name": "m1", "custom_fields": {"x": ' + constant + "}}"
    response = post_json(client, MODELS, raw)
    assert_client_error(response, 422)


def test_nan_in_a_field_that_fails_validation_gives_a_serialisable_422(client: Modelyard) -> None:
    response = post_json(client, WS, '{"name": NaN}')
    assert_client_error(response, 422)
    response = post_json(client, MODELS, '{"name": "m1", "spec": {"num_layers": NaN}}')
    assert_client_error(response, 422)


def test_validation_error_inputs_are_serialisable_and_short(client: Modelyard) -> None:
    """Even past the boundary a 422 body must serialise and echo at most 200 characters of input."""
    response = http(client).post(WS, json={"name": "x" * 5000})
    assert_client_error(response, 422)
    assert "x" * 201 not in response.text
    response = http(client).post(MODELS, json={"name": "m1", "spec": {"num_layers": ["y" * 5000]}})
    assert_client_error(response, 422)
    assert "y" * 201 not in response.text
    response = http(client).post(MODELS, json={"name": "m1", "z" * 5000: 1})
    assert_client_error(response, 422)
    assert "z" * 201 not in response.text


@pytest.mark.parametrize("depth", [65, 300, 5000, 100_000])
def test_deeply_nested_json_is_rejected(client: Modelyard, depth: int) -> None:
    raw = '{"name": "m1", "custom_fields": {"x": ' + "[" * depth + "]" * depth + "}}"
    assert_client_error(post_json(client, MODELS, raw), 400, 422)
    assert_client_error(post_json(client, MODELS, "[" * depth + "]" * depth), 400, 422)


def test_json_nested_64_deep_is_accepted(client: Modelyard) -> None:
    value: object = "leaf"
    for _ in range(61):
        value = [value]
    response = http(client).post(MODELS, json={"name": "m1", "custom_fields": {"x": value}})
    assert response.status_code == 201, response.text[:300]


@pytest.fixture
def small_limit_client(settings: Settings) -> Iterator[Modelyard]:
    small = settings.model_copy(update={"max_json_bytes": 1000, "max_file_size": 1_000_000})
    with TestClient(create_app(small)) as transport:
        yield Modelyard("http://testserver", http_client=authorize(transport))


def test_json_bodies_over_the_limit_are_413_before_parsing(small_limit_client: Modelyard) -> None:
    client = small_limit_client
    big = {"name": "big-ws", "description": "d" * 900, "pad": "p" * 200}
    response = http(client).post(WS, json=big)
    assert_client_error(response, 413)
    assert "MODELYARD_MAX_JSON_BYTES" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"name": "big-ws", "description": "'
        for _ in range(20):
            yield b"d" * 100
        yield b'"}'

    response = http(client).post(WS, content=chunks(), headers={"content-type": "application/json"})
    assert_client_error(response, 413)
    assert sorted(w.name for w in client.workspaces.list()) == ["default", "system"]


def test_the_json_limit_does_not_apply_to_file_uploads(small_limit_client: Modelyard) -> None:
    client = small_limit_client
    make_fileset(client, "default/fs")
    data = json.dumps({"weights": "w" * 50_000}).encode()  # a JSON *file*, far over the JSON body limit
    client.filesets.upload_file("default", "fs", "config.json", data)
    raw = http(client).put(f"{FILESETS}/fs/-/raw.json", content=data)  # no content type (as curl -T)
    assert raw.status_code in (200, 201), raw.text[:300]
    assert http(client).get(f"{FILESETS}/fs/-/config.json").content == data


def test_the_default_json_limit_is_4_mib(client: Modelyard) -> None:
    assert Settings().max_json_bytes == 4 * 1024**2
    response = http(client).post(WS, json={"name": "big-ws", "description": "d" * (4 * 1024**2)})
    assert_client_error(response, 413)


# ----- fileset PATCH with a null purpose ---------------------------------------------------------


def test_patch_fileset_with_null_purpose_is_422_and_changes_nothing(client: Modelyard) -> None:
    client.filesets.create("default", name="fs", purpose="model")
    response = http(client).patch(f"{FILESETS}/fs", json={"purpose": None})
    assert_client_error(response, 422)
    assert client.filesets.retrieve("default", "fs").purpose == "model"
    assert http(client).patch(f"{FILESETS}/fs", json={"purpose": "dataset"}).json()["purpose"] == "dataset"
    assert http(client).patch(f"{FILESETS}/fs", json={"description": "d"}).json()["purpose"] == "dataset"


# ----- endpoint sizes ---------------------------------------------------------------------------


def _endpoint_body(min_replicas: int, max_replicas: int) -> dict[str, object]:
    return {"model": "tiny", "hardware": "cpu", "state": "STOPPED",
            "autoscaling": {"min_replicas": min_replicas, "max_replicas": max_replicas}}


@pytest.mark.parametrize(("low", "high"), [(64, 64), (1, 9), (9, 9)])
def test_endpoint_replicas_are_bounded_by_max_replicas(client: Modelyard, low: int, high: int) -> None:
    response = http(client).post("/v1/endpoints", json=_endpoint_body(low, high))
    assert_client_error(response, 400, 422)
    error = response.json()["error"]  # Together's route family: its SDK's error shape
    assert "MODELYARD_MAX_REPLICAS" in error["message"] and error["param"] == "autoscaling"
    assert http(client).get("/v1/endpoints").json()["data"] == []


def test_endpoint_update_is_bounded_by_max_replicas(client: Modelyard) -> None:
    response = http(client).patch("/v1/endpoints/nope", json={"autoscaling": {"min_replicas": 1, "max_replicas": 64}})
    assert_client_error(response, 400, 422)
    assert "MODELYARD_MAX_REPLICAS" in response.json()["error"]["message"]


def test_endpoint_inactive_timeout_fits_the_column(client: Modelyard) -> None:
    response = http(client).post("/v1/endpoints", json={**_endpoint_body(1, 1), "inactive_timeout": 2**40})
    assert_client_error(response, 400)
    assert response.json()["error"]["param"] == "inactive_timeout"


def test_nul_in_a_header_is_400(client: Modelyard) -> None:
    response = http(client).get("/v1/endpoints", headers={"X-Modelyard-Workspace": "a\x00b"})
    assert_client_error(response, 400)


def test_max_replicas_is_a_setting(settings: Settings) -> None:
    assert Settings().max_replicas == 8
    roomy = settings.model_copy(update={"max_replicas": 64})
    with TestClient(create_app(roomy)) as transport:
        response = authorize(transport).post("/v1/endpoints", json=_endpoint_body(64, 64))
        assert "MODELYARD_MAX_REPLICAS" not in response.text  # passes the size check (then: unknown model)


def test_boundary_errors_on_v1_use_the_openai_shape(client: Modelyard) -> None:
    response = post_json(client, "/v1/endpoints", '{"model": "tiny", "hardware": NaN}')
    assert response.status_code == 400 and set(response.json()) == {"error"}
    response = http(client).post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user",
                                                                                            "content": "\x00"}]})
    assert response.status_code == 400 and set(response.json()) == {"error"}
