"""Models and adapters read their files: spec filled on create, adapters checked against their base."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.client import BadRequestError, Modelyard, UnprocessableEntityError
from modelyard.client.client import upload_dir
from modelyard.engine.fixtures import TinyModelShape, build_adapter, build_base_model


@pytest.fixture
def uploaded(client: Modelyard, fixture_models: dict[str, Path]) -> Modelyard:
    upload_dir(client, fixture_models["base"], "default", "tiny-files")
    upload_dir(client, fixture_models["pirate"], "default", "pirate-files")
    return client


def test_spec_is_derived_from_the_fileset(uploaded: Modelyard) -> None:
    model = uploaded.models.create("default", name="tiny", fileset="tiny-files")
    spec = model.spec
    assert spec is not None and (spec.family, spec.num_layers, spec.hidden_size, spec.num_kv_heads) == ("llama", 2, 64, 1)
    assert spec.checkpoint_model_name == "tiny" and spec.is_chat is True and "assistant" in spec.chat_template
    assert spec.base_num_parameters > 0 and spec.minimum_gpus_all_weights == 1
    assert uploaded.models.retrieve("default", "tiny").spec.linear_layers is None  # only with verbose
    layers = uploaded.models.retrieve("default", "tiny", verbose=True).spec.linear_layers
    assert {"name": "model.layers.0.self_attn.q_proj", "in_features": 64, "out_features": 64} in [
        layer.model_dump() for layer in layers]


def test_user_spec_fields_win(uploaded: Modelyard) -> None:
    given = {"checkpoint_model_name": "mine", "family": "custom-llama", "num_layers": 2, "hidden_size": 64,
             "num_attention_heads": 2, "num_kv_heads": 1, "ffn_hidden_size": 128, "vocab_size": 384,
             "tied_embeddings": False, "gated_mlp": True, "base_num_parameters": 1, "precision": "bf16"}
    model = uploaded.models.create("default", name="tiny", fileset="tiny-files", spec=given)
    assert model.spec.family == "custom-llama" and model.spec.precision == "bf16"
    assert model.spec.linear_layers  # not given: taken from the files


def test_without_config_json_the_spec_stays_empty(client: Modelyard) -> None:
    client.filesets.create("default", name="notes")
    client.filesets.upload_file("default", "notes", "README.md", b"no checkpoint here")
    assert client.models.create("default", name="plain", fileset="notes").spec is None


def test_missing_and_empty_filesets_are_400(client: Modelyard) -> None:
    with pytest.raises(BadRequestError, match="Fileset 'default/nope' not found in workspace 'default'"):
        client.models.create("default", name="m1", fileset="nope")
    client.models.create("default", name="m1")
    client.filesets.create("default", name="empty")
    with pytest.raises(BadRequestError, match="Fileset 'default/empty' exists but is empty"):
        client.adapters.create("default", model="m1", name="a1", fileset="empty", finetuning_type="lora")
    with pytest.raises(BadRequestError, match="not found"):
        client.adapters.create("default", model="m1", name="a1", fileset="other/none", finetuning_type="lora")


def test_adapter_files_fill_and_check_lora_config(uploaded: Modelyard) -> None:
    uploaded.models.create("default", name="tiny", fileset="tiny-files")
    adapter = uploaded.adapters.create("default", model="tiny", name="pirate", fileset="pirate-files",
                                       finetuning_type="lora")
    assert adapter.lora_config.rank == 8 and adapter.lora_config.alpha == 16
    with pytest.raises(UnprocessableEntityError, match="lora_config.rank is 4 but the adapter files have r=8"):
        uploaded.adapters.create("default", model="tiny", name="p2", fileset="pirate-files", finetuning_type="lora",
                                 lora_config={"rank": 4})
    with pytest.raises(UnprocessableEntityError, match="'dora' contradicts the adapter files"):
        uploaded.adapters.create("default", model="tiny", name="p3", fileset="pirate-files", finetuning_type="dora")


def test_an_adapter_for_another_base_is_422(uploaded: Modelyard, tmp_path: Path) -> None:
    uploaded.models.create("default", name="tiny", fileset="tiny-files")
    narrow = build_base_model(tmp_path / "narrow", TinyModelShape(hidden_size=32, intermediate_size=64))
    build_adapter(narrow, tmp_path / "narrow-lora", "some text", steps=1)
    upload_dir(uploaded, tmp_path / "narrow-lora", "default", "narrow-lora")
    with pytest.raises(UnprocessableEntityError) as err:
        uploaded.adapters.create("default", model="tiny", name="narrow", fileset="narrow-lora", finetuning_type="lora")
    assert err.value.detail.startswith("adapter is not compatible with base model 'default/tiny': "
                                       "model.layers.0.mlp.down_proj expects in_features=128, adapter has lora_A [8, 64]")
