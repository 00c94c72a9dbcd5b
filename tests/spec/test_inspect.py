"""Spec extraction on real tiny checkpoints of five families, built here with transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from modelyard.spec import Files, SpecError, incompatibilities, inspect_adapter, inspect_checkpoint


def local_files(folder: Path) -> Files:
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    def read(path: str, start: int, length: int) -> bytes:
        with open(folder / path, "rb") as handle:
            handle.seek(start)
            return handle.read(length)

    return Files(sizes=sizes, read=read)


def save(model: torch.nn.Module, folder: Path, **kwargs: object) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


COMMON = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    out = {
        "llama": save(LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=False)), root / "llama"),
        "qwen2": save(Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True)), root / "qwen2"),
        "mistral": save(MistralForCausalLM(MistralConfig(**COMMON, sliding_window=128)), root / "mistral"),
        "mixtral": save(MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)),
                        root / "mixtral"),
        "gpt2": save(GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256)),
                     root / "gpt2"),
        # a sharded llama: model.safetensors.index.json plus several shards
        "sharded": save(LlamaForCausalLM(LlamaConfig(**COMMON)), root / "sharded", max_shard_size="60KB"),
    }
    (out["llama"] / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return out


def _params(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as handle:
            total += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
    return total


def test_llama(checkpoints: dict[str, Path]) -> None:
    spec = inspect_checkpoint(local_files(checkpoints["llama"]), "tiny-llama")
    assert (spec["family"], spec["num_layers"], spec["hidden_size"], spec["num_attention_heads"],
            spec["num_kv_heads"], spec["ffn_hidden_size"], spec["vocab_size"]) == ("llama", 2, 64, 4, 2, 96, 128)
    assert spec["gated_mlp"] is True and spec["tied_embeddings"] is False and spec["context_size"] == 256
    assert spec["precision"] == "float32" and spec["base_num_parameters"] == _params(checkpoints["llama"])
    assert spec["is_chat"] is True and spec["chat_template"] == "{{ messages }}"
    layers = {layer["name"]: layer for layer in spec["linear_layers"]}
    assert layers["model.layers.0.self_attn.k_proj"] == {"name": "model.layers.0.self_attn.k_proj",
                                                         "in_features": 64, "out_features": 32}
    assert layers["model.layers.1.mlp.down_proj"]["in_features"] == 96
    assert "lm_head" in layers and not any("embed" in name for name in layers)
    assert len(layers) == 2 * 7 + 1
    assert spec["minimum_gpus_all_weights"] == 1 and spec["minimum_gpus_lora"] == 1
    assert "moe_config" not in spec and "sliding_window_config" not in spec


def test_qwen2_tied_and_no_window_by_default(checkpoints: dict[str, Path]) -> None:
    spec = inspect_checkpoint(local_files(checkpoints["qwen2"]), "q")
    assert spec["family"] == "qwen2" and spec["tied_embeddings"] is True
    assert "lm_head" not in {layer["name"] for layer in spec["linear_layers"]}
    assert "sliding_window_config" not in spec  # qwen2 declares a window but use_sliding_window is false
    assert spec["is_chat"] is False


def test_mistral_sliding_window(checkpoints: dict[str, Path]) -> None:
    spec = inspect_checkpoint(local_files(checkpoints["mistral"]), "m")
    assert spec["family"] == "mistral" and spec["sliding_window_config"] == {"window_size": 128}


def test_mixtral_moe(checkpoints: dict[str, Path]) -> None:
    spec = inspect_checkpoint(local_files(checkpoints["mixtral"]), "x")
    assert spec["moe_config"]["num_experts"] == 4 and spec["moe_config"]["num_experts_per_tok"] == 2
    assert spec["moe_config"]["num_expert_layers"] == 2 and spec["gated_mlp"] is True
    assert spec["base_num_parameters"] == _params(checkpoints["mixtral"])


def test_gpt2_conv1d_and_tied(checkpoints: dict[str, Path]) -> None:
    spec = inspect_checkpoint(local_files(checkpoints["gpt2"]), "g")
    assert (spec["family"], spec["num_layers"], spec["hidden_size"], spec["ffn_hidden_size"]) == ("gpt2", 2, 64, 256)
    assert spec["tied_embeddings"] is True and spec["gated_mlp"] is False
    layers = {layer["name"]: layer for layer in spec["linear_layers"]}
    # Conv1D stores [in, out]: c_attn maps 64 -> 3*64, c_fc 64 -> 256, mlp.c_proj 256 -> 64
    assert (layers["transformer.h.0.attn.c_attn"]["in_features"], layers["transformer.h.0.attn.c_attn"]["out_features"]) == (64, 192)
    assert (layers["transformer.h.0.mlp.c_fc"]["in_features"], layers["transformer.h.0.mlp.c_fc"]["out_features"]) == (64, 256)
    assert (layers["transformer.h.0.mlp.c_proj"]["in_features"], layers["transformer.h.0.mlp.c_proj"]["out_features"]) == (256, 64)
    assert not any(name.endswith(("wte", "wpe")) for name in layers)


def test_sharded_checkpoint_reads_every_shard(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["sharded"]
    assert (folder / "model.safetensors.index.json").exists() and len(list(folder.glob("*.safetensors"))) > 1
    spec = inspect_checkpoint(local_files(folder), "s")
    assert spec["base_num_parameters"] == _params(folder)
    assert len(spec["linear_layers"]) == 2 * 7 + 1


def test_unreadable_checkpoints_say_why(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    with pytest.raises(SpecError, match="no config.json"):
        inspect_checkpoint(local_files(tmp_path), "empty")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2,
                                                      "hidden_size": 8, "num_attention_heads": 2}))
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(SpecError, match="header length"):
        inspect_checkpoint(local_files(tmp_path), "broken")


def test_adapter_facts_and_compatibility(fixture_models: dict[str, Path], checkpoints: dict[str, Path]) -> None:
    facts = inspect_adapter(local_files(fixture_models["pirate"]))
    assert facts is not None and facts.rank == 8 and facts.peft_type == "LORA" and not facts.use_dora
    assert "model.layers.0.self_attn.q_proj" in facts.shapes
    base = inspect_checkpoint(local_files(fixture_models["base"]), "tiny")
    assert incompatibilities(facts, base["linear_layers"]) == []
    other = inspect_checkpoint(local_files(checkpoints["llama"]), "other")  # hidden 64 but other kv/ffn sizes
    problems = incompatibilities(facts, other["linear_layers"])
    assert problems and "expects" in problems[0]
