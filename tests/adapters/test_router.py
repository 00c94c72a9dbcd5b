"""Adapter routes (both create paths, nested PATCH/DELETE), through the SDK, on both databases."""

from __future__ import annotations

import pytest

from modelyard.client import ConflictError, Modelyard, NotFoundError, UnprocessableEntityError
from tests.conftest import make_fileset
from tests.seeds import example


@pytest.fixture
def base(client: Modelyard) -> Modelyard:
    client.models.create("default", name="base-model")
    for fileset in ("default/fs1", "default/fs2", "default/full-fs", "other/fs2"):
        make_fileset(client, fileset)
    return client


def test_seed_000_nested_create(client: Modelyard) -> None:
    request, shown = example("000")
    workspace, model_name = shown["model"].split("/")
    client.workspaces.create(workspace)
    client.models.create(workspace, name=model_name)
    make_fileset(client, request["fileset"] if "/" in request["fileset"] else f"{workspace}/{request['fileset']}")
    response = client.request(
        "POST", f"/apis/models/v2/workspaces/{workspace}/models/{model_name}/adapters", json=request
    )
    assert response.status_code == 201
    got = response.json()
    for field in ("name", "workspace", "fileset", "finetuning_type", "enabled", "model"):
        assert got[field] == shown[field], field
    assert got["created_at"].endswith("Z") and got["updated_at"] == got["created_at"]


def test_seed_001_create_with_model_in_body(client: Modelyard) -> None:
    request, shown = example("000")  # seed 001 has no example: same body plus `model`
    workspace, model_name = shown["model"].split("/")
    client.workspaces.create(workspace)
    client.models.create(workspace, name=model_name)
    make_fileset(client, request["fileset"] if "/" in request["fileset"] else f"{workspace}/{request['fileset']}")
    got = client.adapters.create(workspace, model=model_name, **request)
    assert got.model == shown["model"] and got.workspace == workspace and got.enabled is True


def test_optional_fields_round_trip(base: Modelyard) -> None:
    got = base.adapters.create(
        "default", model="base-model", name="full", fileset="default/full-fs", finetuning_type="dora",
        description="domain tuned", enabled=False, lora_config={"rank": 16, "alpha": 32},
    )
    assert (got.description, got.enabled, got.lora_config.rank, got.lora_config.alpha) == ("domain tuned", False, 16, 32)
    assert base.adapters.retrieve("default", "full") == got


def test_base_model_in_another_workspace(base: Modelyard) -> None:
    make_fileset(base, "tuners/fs1")
    got = base.adapters.create("tuners", model="default/base-model", name="cross", fileset="fs1", finetuning_type="lora")
    assert got.workspace == "tuners" and got.model == "default/base-model" and got.fileset == "tuners/fs1"
    assert [a.name for a in base.models.retrieve("default", "base-model").adapters] == ["cross"]


def test_missing_base_model_messages(client: Modelyard) -> None:
    with pytest.raises(NotFoundError) as err:
        client.adapters.create("default", model="ghost-model", name="a1", fileset="fs1", finetuning_type="lora")
    assert err.value.detail == "Base model for adapter (model='ghost-model') not found"
    with pytest.raises(NotFoundError) as err:
        client.adapters.create("default", model="default/ghost-model", name="a1", fileset="fs1", finetuning_type="lora")
    assert err.value.detail == "Base model for adapter (model='default/ghost-model') not found"
    with pytest.raises(NotFoundError) as err:
        client.adapters.create_for_model("default", "nope", name="a1", fileset="fs1", finetuning_type="lora")
    assert err.value.detail == "Model with workspace 'default' and name 'nope' not found"


@pytest.mark.parametrize(
    "model",
    ["a/b/c", "/base-model", "default/", "Default/base-model", "x", "ws/" + "m" * 64, "w" * 64 + "/base-model"],
)
def test_model_reference_rule(base: Modelyard, model: str) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        base.adapters.create("default", model=model, name="a1", fileset="fs1", finetuning_type="lora")
    assert err.value.detail[0]["loc"] == ["body", "model"]


def test_longest_reference_passes_validation(base: Modelyard) -> None:
    longest = "w" * 63 + "/" + "m" * 63  # 127 characters, the limit
    with pytest.raises(NotFoundError):
        base.adapters.create("default", model=longest, name="a1", fileset="fs1", finetuning_type="lora")


def test_names_unique_per_workspace_across_base_models(base: Modelyard) -> None:
    base.models.create("default", name="other-base")
    base.adapters.create_for_model("default", "base-model", name="shared", fileset="fs1", finetuning_type="lora")
    with pytest.raises(ConflictError) as err:
        base.adapters.create_for_model("default", "other-base", name="shared", fileset="fs1", finetuning_type="lora")
    assert err.value.detail == "Model adapter already exists: default/other-base/shared"
    make_fileset(base, "elsewhere/fs1")
    assert base.adapters.create("elsewhere", model="default/base-model", name="shared", fileset="fs1",
                                finetuning_type="lora").workspace == "elsewhere"


@pytest.mark.parametrize(
    "fields, loc",
    [
        ({"name": "Bad_Name", "fileset": "fs1", "finetuning_type": "lora"}, ["body", "name"]),
        ({"name": "a1", "finetuning_type": "lora"}, ["body", "fileset"]),
        ({"name": "a1", "fileset": "fs1"}, ["body", "finetuning_type"]),
        ({"name": "a1", "fileset": "fs1", "finetuning_type": "LORA"}, ["body", "finetuning_type"]),
        ({"name": "a1", "fileset": "fs1", "finetuning_type": "lora", "lora_config": {"alpha": 8}}, ["body", "lora_config", "rank"]),
        ({"name": "a1", "fileset": "fs1", "finetuning_type": "lora", "model": "x-model"}, ["body", "model"]),
        ({"name": "a1", "fileset": "fs1", "finetuning_type": "lora", "description": "d" * 1001}, ["body", "description"]),
    ],
)
def test_nested_create_validation(base: Modelyard, fields: dict, loc: list) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        base.adapters.create_for_model("default", "base-model", **fields)
    assert loc in [e["loc"] for e in err.value.detail]


def test_patch_allowed_fields_and_null(base: Modelyard) -> None:
    base.adapters.create("default", model="base-model", name="pa", fileset="fs1", finetuning_type="lora",
                         description="d", lora_config={"rank": 8})
    got = base.adapters.update("default", "pa", enabled=False, fileset="other/fs2", lora_config={"rank": 4, "alpha": 8})
    assert (got.enabled, got.fileset, got.lora_config.rank, got.description) == (False, "other/fs2", 4, "d")
    got = base.adapters.update("default", "pa", description=None, lora_config=None)
    assert got.description is None and got.lora_config is None and got.enabled is False


@pytest.mark.parametrize(
    "body", [{"name": "new"}, {"model": "default/base-model"}, {"finetuning_type": "dora"}, {"workspace": "x"},
             {"enabled": None}, {"fileset": None}, {"enabled": "sometimes"}]
)
def test_patch_other_fields_are_422(base: Modelyard, body: dict) -> None:
    base.adapters.create("default", model="base-model", name="pa", fileset="fs1", finetuning_type="lora")
    with pytest.raises(UnprocessableEntityError):
        base.adapters.update("default", "pa", **body)
    assert base.adapters.retrieve("default", "pa").finetuning_type == "lora"


def test_nested_patch_and_delete_check_the_model(base: Modelyard) -> None:
    base.models.create("default", name="other-base")
    base.adapters.create_for_model("default", "base-model", name="na", fileset="fs1", finetuning_type="lora")
    assert base.adapters.update("default", "na", model_name="base-model", description="x").description == "x"
    with pytest.raises(NotFoundError) as err:
        base.adapters.update("default", "na", model_name="other-base", description="y")
    assert err.value.detail == "Adapter na with workspace 'default' and model name 'other-base' not found"
    with pytest.raises(NotFoundError):
        base.adapters.delete("default", "na", model_name="other-base")
    with pytest.raises(NotFoundError):
        base.adapters.delete("default", "na", model_name="ghost-model")
    response = base.request("DELETE", "/apis/models/v2/workspaces/default/models/base-model/adapters/na")
    assert response.status_code == 204
    with pytest.raises(NotFoundError):
        base.adapters.retrieve("default", "na")


def test_delete_and_get_missing(base: Modelyard) -> None:
    with pytest.raises(NotFoundError) as err:
        base.adapters.retrieve("default", "ghost")
    assert err.value.detail == "Adapter 'ghost' not found in workspace 'default'"
    with pytest.raises(NotFoundError):
        base.adapters.delete("default", "ghost")


def test_list_filters(base: Modelyard) -> None:
    base.models.create("default", name="other-base")
    make_fileset(base, "team-c/fs3")
    base.adapters.create("default", model="base-model", name="a-lora", fileset="fs1", finetuning_type="lora",
                         description="legal")
    base.adapters.create("default", model="other-base", name="a-dora", fileset="fs2", finetuning_type="dora",
                         enabled=False)
    base.adapters.create("team-c", model="default/base-model", name="c-lora", fileset="fs3", finetuning_type="lora")

    def names(workspace: str = "default", **filters) -> list[str]:
        return sorted(a.name for a in base.adapters.list(workspace, filters=filters).data)

    assert names(enabled=True) == ["a-lora"]
    assert names(enabled=False) == ["a-dora"]
    assert names(model="default/other-base") == ["a-dora"]
    assert names("-", model="default/base-model") == ["a-lora", "c-lora"]
    assert names(finetuning_type={"$in": ["dora", "qlora"]}) == ["a-dora"]
    assert names(fileset="default/fs1") == ["a-lora"]
    assert names(description={"$like": "leg"}) == ["a-lora"]
    assert names(name={"$nin": ["a-lora"]}) == ["a-dora"]
    assert names("-") == ["a-dora", "a-lora", "c-lora"]
    page = base.adapters.list("default", sort="-name", page_size=1)
    assert [a.name for a in page.data] == ["a-lora"] and page.pagination.total_pages == 2
    with pytest.raises(Exception) as err:
        base.adapters.list("default", filters={"project": "x"})
    assert err.value.status_code == 400
    assert "Valid fields: ['created_at', 'description', 'enabled', 'fileset', 'finetuning_type', 'model', 'name', 'updated_at']" in err.value.detail
