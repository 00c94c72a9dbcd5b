from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.storage import fileset_dir

ADAPTERS = ("pirate", "chef", "space")


def fill_filesets(settings: Settings, fixture_models: dict[str, Path]) -> None:
    """Put the fixture checkpoint and adapters where local filesets live (the files API does this for users)."""
    shutil.copytree(fixture_models["base"], fileset_dir(settings.home, "default/tiny-files"))
    for name in ADAPTERS:
        shutil.copytree(fixture_models[name], fileset_dir(settings.home, f"default/{name}-files"))


def register(client: Modelyard) -> None:
    """The base model and its three adapters, through the registry API."""
    client.models.create("default", name="tiny", fileset="default/tiny-files")
    for name in ADAPTERS:
        client.adapters.create("default", model="default/tiny", name=name, fileset=f"{name}-files",
                               finetuning_type="lora")


@pytest.fixture
def registry(settings: Settings, fixture_models: dict[str, Path], live_server: str) -> Iterator[tuple[Modelyard, Together]]:
    """Our SDK and Together's against a live server, with the fixture model registered."""
    fill_filesets(settings, fixture_models)
    with Modelyard(live_server) as ours:
        register(ours)
        yield ours, Together(api_key="test", base_url=live_server + "/v1", max_retries=0)
