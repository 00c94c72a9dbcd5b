"""Models routes, through the SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from modelyard.client import (
    BadRequestError,
    ConflictError,
    Modelyard,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from tests.conftest import as_user, make_fileset
from tests.seeds import example

SPEC = {
    "checkpoint_model_name": "tiny",
    "family": "llama",
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "ffn_hidden_size": 128,
    "vocab_size": 512,
    "tied_embeddings": False,
    "gated_mlp": True,
    "base_num_parameters": 123456,
    "precision": "float32",
    "linear_layers": [{"name": "model.layers.0.self_attn.q_proj", "in_features": 64, "out_features": 64}],
}


def test_seed_example_minimal_request(client: Modelyard) -> None:
    request, shown = example("002")
    client.workspaces.create(shown["workspace"])
    model = client.models.create(shown["workspace"], **request)
    assert model.name == shown["name"] == request["name"]
    assert model.workspace == shown["workspace"]
    assert model.id.startswith("model-") and len(model.id) > 10
    assert model.trust_remote_code is False and model.adapters == []
    raw = client.request("GET", f"/apis/models/v2/workspaces/{shown['workspace']}/models/{request['name']}").json()
    assert raw["created_at"].endswith("Z") and datetime.fromisoformat(raw["created_at"])


def test_seed_example_full_body_round_trips(client: Modelyard) -> None:
    """Every writable field of the seed's response example, sent back, is stored and returned."""
    _, shown = example("002")
    client.workspaces.create(shown["workspace"])
    writable = {
        k: v for k, v in shown.items()
        if k not in ("id", "workspace", "created_at", "updated_at", "adapters")
    }
    writable["fileset"] = "research-team/llama-3.1-8b-checkpoints"
    make_fileset(client, writable["fileset"])
    model = client.models.create(shown["workspace"], **writable)
    got = client.request(
        "GET", f"/apis/models/v2/workspaces/{shown['workspace']}/models/{shown['name']}", params={"verbose": "true"}
    ).json()
    for field in ("name", "project", "description", "finetuning_type", "fileset", "trust_remote_code",
                  "base_model", "backend_format", "prompt", "custom_fields", "ownership", "model_providers"):
        assert got[field] == shown[field], field
    assert got["spec"] == shown["spec"]
    endpoint = dict(shown["api_endpoint"])
    key = endpoint.pop("api_key")
    assert {k: got["api_endpoint"][k] for k in endpoint} == endpoint
    assert got["api_endpoint"]["api_key"] == "*" * (len(key) - 4) + key[-4:]
    assert model.id == got["id"]


def test_unknown_body_field_is_422_naming_it(client: Modelyard) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.models.create("default", name="m-1", colour="red")
    (error,) = err.value.detail
    assert error["loc"] == ["body", "colour"] and "colour" in error["msg"]


def test_unknown_nested_field_is_422(client: Modelyard) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.models.create("default", name="m-1", spec={**SPEC, "layers": 3})
    assert err.value.detail[0]["loc"] == ["body", "spec", "layers"]


@pytest.mark.parametrize(
    "fields, loc",
    [
        ({"name": "Llama"}, ["body", "name"]),
        ({"name": "m1", "finetuning_type": "LORA"}, ["body", "finetuning_type"]),
        ({"name": "m1", "backend_format": "GRPC"}, ["body", "backend_format"]),
        ({"name": "m1", "description": "x" * 1001}, ["body", "description"]),
        ({"name": "m1", "project": "has space"}, ["body", "project"]),
        ({"name": "m1", "fileset": "a/b/c"}, ["body", "fileset"]),
        ({"name": "m1", "api_endpoint": {"url": "not a url"}}, ["body", "api_endpoint", "url"]),
        ({"name": "m1", "spec": {"family": "llama"}}, ["body", "spec", "checkpoint_model_name"]),
        ({"name": "m1", "spec": {**SPEC, "moe_config": {"num_experts": 8}}}, ["body", "spec", "moe_config", "num_experts_per_tok"]),
        ({}, ["body", "name"]),
    ],
)
def test_validation_errors_are_422_in_fastapi_form(client: Modelyard, fields: dict, loc: list) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.models.create("default", **fields)
    assert loc in [e["loc"] for e in err.value.detail]
    for error in err.value.detail:
        assert {"type", "loc", "msg", "input"} <= set(error)


def test_all_25_finetuning_types_are_accepted(client: Modelyard) -> None:
    from modelyard.adapters.schemas import FinetuningType

    assert len(FinetuningType) == 25
    for i, kind in enumerate(FinetuningType):
        assert client.models.create("default", name=f"ft-{i}", finetuning_type=kind.value).finetuning_type == kind


def test_duplicate_is_409_naming_workspace_and_name(client: Modelyard) -> None:
    client.models.create("default", name="dup")
    with pytest.raises(ConflictError) as err:
        client.models.create("default", name="dup")
    assert err.value.detail == "Model with workspace 'default' and name 'dup' already exists"


def test_same_name_in_two_workspaces(client: Modelyard) -> None:
    client.workspaces.create("other")
    a = client.models.create("default", name="same")
    b = client.models.create("other", name="same")
    assert a.id != b.id


def test_unknown_workspace_is_404_on_every_route(client: Modelyard) -> None:
    base = "/apis/models/v2/workspaces/ghost"
    calls = [
        ("GET", f"{base}/models", None),
        ("POST", f"{base}/models", {"name": "m1"}),
        ("GET", f"{base}/models/m1", None),
        ("PATCH", f"{base}/models/m1", {"description": "x"}),
        ("DELETE", f"{base}/models/m1", None),
        ("GET", f"{base}/adapters", None),
        ("POST", f"{base}/adapters", {"name": "a1", "model": "default/base-x", "fileset": "f1", "finetuning_type": "lora"}),
        ("POST", f"{base}/models/m1/adapters", {"name": "a1", "fileset": "f1", "finetuning_type": "lora"}),
        ("GET", f"{base}/adapters/a1", None),
        ("DELETE", f"{base}/adapters/a1", None),
    ]
    for method, path, body in calls:
        with pytest.raises(NotFoundError) as err:
            client.request(method, path, json=body)
        assert err.value.detail == "Workspace 'ghost' not found", (method, path)


def test_get_missing_model_is_404(client: Modelyard) -> None:
    with pytest.raises(NotFoundError) as err:
        client.models.retrieve("default", "nope")
    assert err.value.detail == "Model with workspace 'default' and name 'nope' not found"


def test_verbose_controls_linear_layers(client: Modelyard) -> None:
    created = client.models.create("default", name="spec-model", spec=SPEC)
    assert created.spec.linear_layers  # the create response shows what was stored
    assert client.models.retrieve("default", "spec-model").spec.linear_layers is None
    assert client.models.retrieve("default", "spec-model", verbose=True).spec.linear_layers[0].in_features == 64
    assert client.models.list("default").data[0].spec.linear_layers is None
    assert client.models.list("default", verbose=True).data[0].spec.linear_layers


def test_patch_merges_and_null_clears(client: Modelyard) -> None:
    client.models.create("default", name="pm", description="first", project="p1", custom_fields={"a": 1})
    time.sleep(0.01)
    patched = client.models.update("default", "pm", description="second")
    assert patched.description == "second" and patched.project == "p1" and patched.custom_fields == {"a": 1}
    assert patched.updated_at > patched.created_at
    cleared = client.models.update("default", "pm", project=None)
    assert cleared.project is None and cleared.description == "second"
    assert client.models.retrieve("default", "pm").project is None


def test_patch_rejects_unknown_and_immutable_fields(client: Modelyard) -> None:
    client.models.create("default", name="pm")
    for body in ({"name": "renamed"}, {"bogus": 1}, {"trust_remote_code": None}):
        with pytest.raises(UnprocessableEntityError):
            client.models.update("default", "pm", **body)


def test_patch_missing_model_is_404(client: Modelyard) -> None:
    with pytest.raises(NotFoundError):
        client.models.update("default", "ghost", description="x")


def test_api_key_is_masked_on_every_route(client: Modelyard) -> None:
    key = "sk-secret-value-1234"
    masked = "*" * (len(key) - 4) + "1234"
    created = client.models.create("default", name="secret", api_endpoint={"url": "https://x.example/v1", "api_key": key})
    assert created.api_endpoint.api_key == masked
    assert client.models.retrieve("default", "secret").api_endpoint.api_key == masked
    assert client.models.list("default").data[0].api_endpoint.api_key == masked
    patched = client.models.update("default", "secret", description="d")
    assert patched.api_endpoint.api_key == masked
    # echoing the masked value back (GET then PATCH) with the same url keeps the real key
    client.models.update("default", "secret", api_endpoint={"url": "https://x.example/v1", "api_key": masked})
    raw = client.request("GET", "/apis/models/v2/workspaces/default/models/secret").text
    assert key not in raw and masked in raw
    # with another url it is dropped (tests/secrets/test_model_api_key.py has the rest of that rule)
    moved = client.models.update("default", "secret", api_endpoint={"url": "https://y.example/v1", "api_key": masked})
    assert moved.api_endpoint.api_key is None
    # and short keys are hidden entirely
    short = client.models.create("default", name="short", api_endpoint={"api_key": "abc"})
    assert short.api_endpoint.api_key == "***"


def test_real_key_survives_masked_echo(client: Modelyard, app) -> None:
    import sqlalchemy as sa

    client.models.create("default", name="echo", api_endpoint={"api_key": "sk-0123456789"})
    shown = client.models.retrieve("default", "echo").api_endpoint.api_key
    client.models.update("default", "echo", api_endpoint={"api_key": shown})
    with app.state.db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT api_endpoint FROM models WHERE name='echo'")).scalar_one()
    stored = stored if isinstance(stored, dict) else __import__("json").loads(stored)
    assert "api_key" not in stored  # stored only encrypted
    assert app.state.keyring.decrypt(stored["api_key_encrypted"]) == "sk-0123456789"


def test_trust_remote_code_needs_a_trusted_fileset_workspace(client: Modelyard) -> None:
    """An Editor (``*`` is Editor in ``default``) needs a fileset in a trusted workspace; the workspace's
    Admin (and a PlatformAdmin) may decide for itself."""
    make_fileset(client, "default/ckpt")
    make_fileset(client, "trusted/ckpt")
    bob = as_user(client, "bob@example.com", {"trusted": "Viewer"})
    with pytest.raises(PermissionDeniedError) as err:
        bob.models.create("default", name="rc", fileset="default/ckpt", trust_remote_code=True)
    assert "MODELYARD_TRUSTED_FILESET_WORKSPACES" in err.value.detail and "'default'" in err.value.detail
    with pytest.raises(PermissionDeniedError):
        bob.models.create("default", name="rc", trust_remote_code=True)
    ok = bob.models.create("default", name="rc", fileset="trusted/ckpt", trust_remote_code=True)
    assert ok.trust_remote_code is True
    with pytest.raises(PermissionDeniedError):  # moving the fileset out of the trusted workspace
        bob.models.update("default", "rc", fileset="default/ckpt")
    assert client.models.retrieve("default", "rc").fileset == "trusted/ckpt"
    assert client.models.update("default", "rc", fileset="default/ckpt").trust_remote_code is True  # PlatformAdmin


def test_fileset_name_is_qualified_with_path_workspace(client: Modelyard) -> None:
    make_fileset(client, "default/ckpt")
    assert client.models.create("default", name="fq", fileset="ckpt").fileset == "default/ckpt"


def test_delete_is_204_and_removes_adapters(client: Modelyard) -> None:
    client.models.create("default", name="gone")
    make_fileset(client, "default/fs1")
    client.adapters.create_for_model("default", "gone", name="gone-a", fileset="fs1", finetuning_type="lora")
    response = client.request("DELETE", "/apis/models/v2/workspaces/default/models/gone")
    assert response.status_code == 204 and response.content == b""
    with pytest.raises(NotFoundError):
        client.adapters.retrieve("default", "gone-a")
    with pytest.raises(NotFoundError):
        client.models.delete("default", "gone")


def test_model_lists_its_adapters(client: Modelyard) -> None:
    client.models.create("default", name="base")
    make_fileset(client, "default/fs1")
    make_fileset(client, "default/fs2")
    client.adapters.create_for_model("default", "base", name="a-one", fileset="fs1", finetuning_type="lora")
    client.adapters.create("default", model="base", name="a-two", fileset="fs2", finetuning_type="dora")
    model = client.models.retrieve("default", "base")
    assert [a.name for a in model.adapters] == ["a-two", "a-one"]  # newest first, as the reference embeds them
    assert all(a.model == "default/base" for a in model.adapters)
    assert [a.name for a in client.models.list("default").data[0].adapters] == ["a-two", "a-one"]


# ----- lists -----------------------------------------------------------------------------------


@pytest.fixture
def catalog(client: Modelyard) -> Modelyard:
    client.workspaces.create("team-b")
    for fileset in ("default/llama-small-ckpt", "default/qwen", "default/fs1"):
        make_fileset(client, fileset)
    client.models.create("default", name="llama-small", project="nlp", finetuning_type="lora_merged",
                         fileset="default/llama-small-ckpt", base_model="llama-base", description="Small llama")
    client.models.create("default", name="llama-large", project="nlp", finetuning_type="all_weights",
                         description="Large llama")
    client.models.create("default", name="qwen-tiny", project="asr", fileset="default/qwen")
    client.models.create("team-b", name="mistral-7b", project="nlp")
    client.adapters.create("default", model="llama-small", name="ad-1", fileset="fs1", finetuning_type="lora")
    return client


def _names(page) -> list[str]:
    return [m.name for m in page.data]


def test_list_envelope(catalog: Modelyard) -> None:
    raw = catalog.request("GET", "/apis/models/v2/workspaces/default/models", params={"page_size": 2}).json()
    assert set(raw) == {"data", "pagination", "sort"}  # no filter applied: no "filter" (as the reference)
    assert raw["pagination"] == {"page": 1, "page_size": 2, "current_page_size": 2, "total_pages": 2, "total_results": 3}
    assert raw["sort"] == "created_at"


def test_pages_cover_everything_once(catalog: Modelyard) -> None:
    first = catalog.models.list("default", page_size=2, sort="name")
    assert _names(first) == ["llama-large", "llama-small"]
    second = first.next_page()
    assert _names(second) == ["qwen-tiny"] and second.pagination.current_page_size == 1
    assert [m.name for m in first.auto_paging_iter()] == ["llama-large", "llama-small", "qwen-tiny"]
    beyond = catalog.models.list("default", page=5, page_size=2)
    assert beyond.data == [] and beyond.pagination.total_results == 3


@pytest.mark.parametrize("page_size", [0, 1001])
def test_page_size_bounds(catalog: Modelyard, page_size: int) -> None:
    with pytest.raises(UnprocessableEntityError):
        catalog.models.list("default", page_size=page_size)


def test_page_below_one_is_422(catalog: Modelyard) -> None:
    with pytest.raises(UnprocessableEntityError):
        catalog.models.list("default", page=0)


def test_sort(catalog: Modelyard) -> None:
    assert _names(catalog.models.list("default", sort="name")) == ["llama-large", "llama-small", "qwen-tiny"]
    assert _names(catalog.models.list("default", sort="-name")) == ["qwen-tiny", "llama-small", "llama-large"]
    assert _names(catalog.models.list("default", sort="created_at")) == ["llama-small", "llama-large", "qwen-tiny"]
    assert _names(catalog.models.list("default", sort="-created_at")) == ["qwen-tiny", "llama-large", "llama-small"]
    catalog.models.update("default", "llama-small", description="touched")
    assert _names(catalog.models.list("default", sort="-updated_at"))[0] == "llama-small"
    with pytest.raises(UnprocessableEntityError):
        catalog.models.list("default", sort="size")


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"name": "qwen-tiny"}, ["qwen-tiny"]),
        ({"name": {"$eq": "qwen-tiny"}}, ["qwen-tiny"]),
        ({"name": {"$like": "llama"}}, ["llama-small", "llama-large"]),
        ({"name": {"$like": "LLAMA-s*"}}, ["llama-small"]),
        ({"name": {"$in": ["qwen-tiny", "llama-large"]}}, ["llama-large", "qwen-tiny"]),
        ({"name": {"$nin": ["qwen-tiny", "llama-large"]}}, ["llama-small"]),
        ({"project": "nlp"}, ["llama-small", "llama-large"]),
        ({"project": {"$nin": ["nlp"]}}, ["qwen-tiny"]),
        ({"base_model": "llama-base"}, ["llama-small"]),
        ({"finetuning_type": "all_weights"}, ["llama-large"]),
        ({"description": {"$like": "large"}}, ["llama-large"]),
        ({"fileset": {"$like": "qwen"}}, ["qwen-tiny"]),
        ({"adapters": True}, ["llama-small"]),
        ({"adapters": False}, ["llama-large", "qwen-tiny"]),
        ({"project": "nlp", "adapters": False}, ["llama-large"]),
    ],
)
def test_filters(catalog: Modelyard, filters: dict, expected: list[str]) -> None:
    page = catalog.models.list("default", filters=filters)
    assert sorted(_names(page)) == sorted(expected)
    assert page.pagination.total_results == len(expected)


def test_filter_echo(catalog: Modelyard) -> None:
    page = catalog.models.list("default", filters={"name": {"$like": "llama"}, "project": "nlp"})
    assert page.filter == {"name": {"$like": "llama"}, "project": "nlp"}


def test_timestamp_filters(catalog: Modelyard) -> None:
    models = catalog.models.list("default", sort="created_at").data
    middle = models[1].created_at
    after = catalog.models.list("default", filters={"created_at": {"$gte": middle.isoformat()}})
    assert sorted(_names(after)) == ["llama-large", "qwen-tiny"]
    before = catalog.models.list("default", filters={"created_at": {"$lte": middle.isoformat()}})
    assert sorted(_names(before)) == ["llama-large", "llama-small"]
    future = (datetime.now().astimezone() + timedelta(days=1)).isoformat()
    assert catalog.models.list("default", filters={"updated_at": {"$gte": future}}).data == []


@pytest.mark.parametrize(
    "params, message",
    [
        ({"filter[bogus]": "1"}, "Unknown filter field 'bogus'. Valid fields: ['adapters', 'base_model'"),
        ({"filter[name][$gte]": "a"}, "Unknown filter operator '$gte' for field 'name'. Valid operators: ['$eq', '$like', '$in', '$nin']"),
        ({"filter[created_at][$like]": "a"}, "Valid operators: ['$eq', '$gte', '$lte']"),
        ({"filter[adapters]": "maybe"}, "Filter 'adapters' expects true or false"),
        ({"filter[created_at][$gte]": "yesterday"}, "expects an ISO-8601 timestamp"),
        ({"filter[name": "x"}, "Malformed filter parameter"),
    ],
)
def test_bad_filters_are_400(catalog: Modelyard, params: dict, message: str) -> None:
    with pytest.raises(BadRequestError) as err:
        catalog.request("GET", "/apis/models/v2/workspaces/default/models", params=params)
    assert message in err.value.detail


def test_dash_workspace_lists_across_workspaces(catalog: Modelyard) -> None:
    page = catalog.models.list("-", filters={"project": "nlp"})
    assert sorted((m.workspace, m.name) for m in page.data) == [
        ("default", "llama-large"), ("default", "llama-small"), ("team-b", "mistral-7b")
    ]
    with pytest.raises(NotFoundError):
        catalog.models.retrieve("-", "llama-small")
