"""Malformed checkpoint and adapter files: the spec is left empty (or partial) with a logged reason,
never an exception other than SpecError, and never a 500 on model create (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
import struct

import pytest

from modelyard.client import Modelyard
from modelyard.models.schemas import ModelSpec
from modelyard.spec import Files, SpecError, inspect_adapter, inspect_checkpoint
from tests.conftest import make_fileset

CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128, "max_position_embeddings": 256}


def config(**changes: object) -> bytes:
    return json.dumps({**CONFIG, **changes}).encode()


def safetensors(header: object, *, declared: int | None = None, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


GOOD_TENSOR = {"model.layers.0.mlp.gate_proj.weight": {"dtype": "F32", "shape": [96, 64], "data_offsets": [0, 0]}}

# name -> (files, whether a (partial) spec must still come out of it)
MALFORMED: dict[str, tuple[dict[str, bytes], bool]] = {
    "config-invalid-json": ({"config.json": b"{not json"}, False),
    "config-a-list": ({"config.json": b"[1, 2, 3]"}, False),
    "config-a-string": ({"config.json": b'"llama"'}, False),
    "config-empty": ({"config.json": b""}, False),
    "config-not-utf8": ({"config.json": b"\xff\xfe{\x00}"}, False),
    "config-nested-deep": ({"config.json": b"[" * 100_000 + b"]" * 100_000}, False),
    "hidden-size-a-word": ({"config.json": config(hidden_size="big")}, False),
    "hidden-size-negative": ({"config.json": config(hidden_size=-64)}, False),
    "hidden-size-huge": ({"config.json": config(hidden_size=10**30)}, False),
    "hidden-size-fraction": ({"config.json": config(hidden_size=64.5)}, False),
    "hidden-size-bool": ({"config.json": config(hidden_size=True)}, False),
    "hidden-size-nan": ({"config.json": json.dumps({**CONFIG, "hidden_size": float("nan")}).encode()}, False),
    "layers-a-list": ({"config.json": config(num_hidden_layers=[2])}, False),
    "heads-zero": ({"config.json": config(num_attention_heads=0)}, False),
    "missing-fields": ({"config.json": b'{"model_type": "llama"}'}, False),
    "context-a-word": ({"config.json": config(max_position_embeddings="long")}, False),
    "vocab-a-dict": ({"config.json": config(vocab_size={"n": 1})}, False),
    "experts-a-word": ({"config.json": config(num_local_experts="many")}, False),
    "experts-ffn-a-word": ({"config.json": config(num_local_experts=4, moe_intermediate_size="x")}, False),
    "mamba-state-negative": ({"config.json": config(model_type="mamba", state_size=-1)}, False),
    "text-config-a-list": ({"config.json": config(text_config=[1])}, True),
    "model-type-a-dict": ({"config.json": config(model_type={"x": 1})}, True),
    "model-type-with-nul": ({"config.json": config(model_type="lla\x00ma")}, True),
    "dtype-a-number": ({"config.json": config(torch_dtype=5)}, True),
    "sliding-window-a-word": ({"config.json": config(sliding_window="wide")}, True),
    "safetensors-too-short": ({"config.json": config(), "model.safetensors": b"\x01\x02"}, False),
    "safetensors-truncated-header": (
        {"config.json": config(), "model.safetensors": safetensors(GOOD_TENSOR)[:40]}, False),
    "safetensors-header-length-2^60": (
        {"config.json": config(), "model.safetensors": safetensors(GOOD_TENSOR, declared=2**60)}, False),
    "safetensors-header-length-2^64-1": (
        {"config.json": config(), "model.safetensors": safetensors(GOOD_TENSOR, declared=2**64 - 1)}, False),
    "safetensors-header-not-json": ({"config.json": config(), "model.safetensors": safetensors(b"{nope")}, False),
    "safetensors-header-not-utf8": (
        {"config.json": config(), "model.safetensors": safetensors(b'{"\xff": 1}')}, False),
    "safetensors-header-a-list": ({"config.json": config(), "model.safetensors": safetensors([1, 2])}, False),
    "safetensors-entry-a-number": ({"config.json": config(), "model.safetensors": safetensors({"w.weight": 3})}, False),
    "safetensors-shape-words": ({"config.json": config(), "model.safetensors": safetensors(
        {"w.weight": {"dtype": "F32", "shape": ["a", "b"]}})}, False),
    "safetensors-shape-huge": ({"config.json": config(), "model.safetensors": safetensors(
        {"w.weight": {"dtype": "F32", "shape": [10**30, 2]}})}, False),
    "safetensors-shape-negative": ({"config.json": config(), "model.safetensors": safetensors(
        {"w.weight": {"dtype": "F32", "shape": [-4, 2]}})}, False),
    "safetensors-dtype-a-list": ({"config.json": config(), "model.safetensors": safetensors(
        {"w.weight": {"dtype": ["F32"], "shape": [4, 2]}})}, False),
    "safetensors-name-with-nul": ({"config.json": config(), "model.safetensors": safetensors(
        {"model.layers.0.q\x00proj.weight": {"dtype": "F32", "shape": [4, 2]}})}, True),
    "index-weight-map-a-list": (
        {"config.json": config(), "model.safetensors.index.json": b'{"weight_map": ["a"]}'}, False),
    "index-a-list": ({"config.json": config(), "model.safetensors.index.json": b"[]"}, False),
    "index-shard-a-number": (
        {"config.json": config(), "model.safetensors.index.json": b'{"weight_map": {"w": 5}}'}, False),
    "index-missing-shard": (
        {"config.json": config(), "model.safetensors.index.json": b'{"weight_map": {"w": "gone.safetensors"}}'},
        False),
    "tokenizer-template-a-number": ({"config.json": config(), "tokenizer_config.json": b'{"chat_template": 42}'}, True),
    "tokenizer-template-a-dict": (
        {"config.json": config(), "tokenizer_config.json": b'{"chat_template": {"a": 1}}'}, True),
    "tokenizer-template-bad-names": ({"config.json": config(), "tokenizer_config.json": json.dumps(
        {"chat_template": [{"name": ["x"], "template": 1}, {"name": {}, "template": "{{ x }}"}]}).encode()}, True),
    "tokenizer-a-list": ({"config.json": config(), "tokenizer_config.json": b"[1]"}, True),
    "tokenizer-invalid-json": ({"config.json": config(), "tokenizer_config.json": b"{chat"}, True),
    "tokenizer-not-utf8": ({"config.json": config(), "tokenizer_config.json": b"\xff\xff"}, True),
    "chat-template-not-utf8": ({"config.json": config(), "chat_template.jinja": b"\xc3\x28 {{ x }}"}, True),
    "chat-template-with-nul": ({"config.json": config(), "chat_template.jinja": b"{{ x }}\x00"}, True),
}


def memory_files(files: dict[str, bytes]) -> Files:
    return Files(sizes={p: len(d) for p, d in files.items()}, read=lambda p, start, n: files[p][start:start + n])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoint_is_a_spec_error_or_a_valid_spec(case: str) -> None:
    files, partial = MALFORMED[case]
    try:
        spec = inspect_checkpoint(memory_files(files), "m")
    except SpecError as exc:
        assert not partial, f"{case}: expected a partial spec, got SpecError({exc})"
        return
    assert partial, f"{case}: expected a SpecError, got a spec"
    ModelSpec.model_validate(spec)
    assert "\x00" not in json.dumps(spec)
    if case.startswith(("tokenizer", "chat-template-not-utf8")):
        assert spec["is_chat"] is False and spec["chat_template"] is None


@pytest.mark.parametrize("adapter_config", [
    b"{bad", b"[]", b'{"r": "x"}', b'{"r": 1e400}', b'{"r": -3}', b'{"r": 8, "lora_alpha": NaN}',
    b'{"r": 8, "lora_alpha": 1e999}', b'{"r": 8, "target_modules": 5}', b'{"r": 8, "target_modules": [1, 2]}',
    b'{"r": 99999999999999999999999999}', b"\xff",
])
def test_malformed_adapter_config_is_a_spec_error_or_sane_facts(adapter_config: bytes) -> None:
    try:
        facts = inspect_adapter(memory_files({"adapter_config.json": adapter_config}))
    except SpecError:
        return
    assert facts is not None and 0 <= facts.rank <= 2**40
    assert facts.alpha is None or 1 <= facts.alpha <= 2**40


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_model_create_with_malformed_checkpoint_is_201(
    client: Modelyard, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    files, partial = MALFORMED[case]
    make_fileset(client, "default/ckpt", files)
    with caplog.at_level(logging.INFO):
        response = client._http.post("/apis/models/v2/workspaces/default/models",
                                     json={"name": "broken", "fileset": "ckpt"})
    assert response.status_code == 201, (case, response.status_code, response.text[:300])
    spec = response.json().get("spec")
    reasons = [r.__dict__.get("reason") for r in caplog.records
               if r.getMessage() in ("spec not derived from fileset", "chat template not read")]
    if partial:
        assert spec is not None and spec["family"]
    else:
        assert spec is None
    if spec is None or case.startswith(("tokenizer", "chat-template-not-utf8")):
        assert reasons and all(reasons), f"{case}: no reason logged"
        assert all("/tmp" not in reason and "/home" not in reason for reason in reasons)
    assert client.models.retrieve("default", "broken").name == "broken"
