"""Our OpenAPI document matches the seeds' schemas: property names, required lists, enum values."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.config import Settings
from tests.seeds import openapi_schemas

SEED_SCHEMAS = {**openapi_schemas("000"), **openapi_schemas("002")}
COMPARED = [
    "CreateModelEntityRequest", "ModelEntity", "ModelSpec", "Adapter", "CreateModelAdapterRequest",
    "FinetuningType", "MoEConfig", "MambaConfig", "SlidingWindowConfig", "LinearLayerSpec", "ToolCallConfig",
    "APIEndpointData", "BackendFormat", "InferenceParams", "PromptData", "Lora",
]


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("openapi")
    with TestClient(create_app(Settings(home=home))) as http:
        return http.get("/openapi.json").json()["components"]["schemas"]


@pytest.mark.parametrize("name", COMPARED)
def test_schema_matches_seed(ours: dict, name: str) -> None:
    seed, mine = SEED_SCHEMAS[name], ours[name]
    assert set(mine.get("properties", {})) == set(seed.get("properties", {})), name
    assert sorted(mine.get("required", [])) == sorted(seed.get("required", [])), name
    if "enum" in seed:
        assert mine["enum"] == seed["enum"]


def test_finetuning_type_has_25_values(ours: dict) -> None:
    assert len(ours["FinetuningType"]["enum"]) == 25


def test_docs_are_served(tmp_path) -> None:
    with TestClient(create_app(Settings(home=tmp_path))) as http:
        assert http.get("/docs").status_code == 200
        paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/apis/entities/v2/workspaces",
        "/apis/models/v2/workspaces/{workspace}/models",
        "/apis/models/v2/workspaces/{workspace}/models/{name}",
        "/apis/models/v2/workspaces/{workspace}/models/{model_name}/adapters",
        "/apis/models/v2/workspaces/{workspace}/models/{model_name}/adapters/{adapter}",
        "/apis/models/v2/workspaces/{workspace}/adapters",
        "/apis/models/v2/workspaces/{workspace}/adapters/{name}",
    ):
        assert path in paths
