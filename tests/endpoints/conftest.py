from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.client.client import upload_dir
from modelyard.config import Settings

ADAPTERS = ("pirate", "chef", "space")


def register(client: Modelyard, fixture_models: dict[str, Path]) -> None:
    """Upload the fixture checkpoint and adapters as filesets, then register the base model and its
    three adapters, all through the API."""
    upload_dir(client, fixture_models["base"], "default", "tiny-files")
    for name in ADAPTERS:
        upload_dir(client, fixture_models[name], "default", f"{name}-files")
    client.models.create("default", name="tiny", fileset="default/tiny-files")
    for name in ADAPTERS:
        client.adapters.create("default", model="default/tiny", name=name, fileset=f"{name}-files",
                               finetuning_type="lora")


@pytest.fixture
def registry(settings: Settings, fixture_models: dict[str, Path], live_server: str) -> Iterator[tuple[Modelyard, Together]]:
    """Our SDK and Together's against a live server, with the fixture model registered."""
    with Modelyard(live_server) as ours:
        register(ours, fixture_models)
        yield ours, Together(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
