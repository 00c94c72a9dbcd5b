"""The engine's scheduler: batch parity, parity with peft, adapter tiers, load validation, sampling."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelyard.engine.core import Engine, UnknownAdapter
from modelyard.engine.lora import AdapterError
from tests.engine.conftest import generate, run, wait_until

PROMPTS = ["Tell me about", "The chef", "Stars and", "one two"]
ADAPTERS = [None, "pirate", "chef", "space"]


@pytest.fixture
def engine(fixture_models: dict[str, Path]):
    engine = Engine(fixture_models["base"], max_loras=4, max_lora_rank=16)
    for name in ("pirate", "chef", "space"):
        engine.load_adapter(name, str(fixture_models[name]))
    yield engine
    engine.shutdown()


def _peft_greedy(fixture_models: dict[str, Path], adapter: str, prompt: str, n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixture_models["base"])
    base = AutoModelForCausalLM.from_pretrained(fixture_models["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, fixture_models[adapter]).eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids.input_ids.shape[1]:].tolist()


def test_adapters_change_the_output(engine: Engine) -> None:
    texts = {a: run(engine, "Tell me about", a).text for a in ADAPTERS}
    assert len(set(texts.values())) == 4, texts


def test_matches_peft_token_for_token(engine: Engine, fixture_models: dict[str, Path]) -> None:
    for adapter in ("pirate", "chef", "space"):
        for prompt in PROMPTS[:2]:
            ours = run(engine, prompt, adapter).output_ids
            assert ours == _peft_greedy(fixture_models, adapter, prompt, len(ours)), (adapter, prompt)


def test_batched_equals_alone(engine: Engine) -> None:
    alone = {(p, a): run(engine, p, a).output_ids for p in PROMPTS for a in ADAPTERS}
    steps_before = engine.steps
    gens = [(p, a, generate(engine, p, a)) for p in PROMPTS for a in ADAPTERS]  # 16 rows, mixed adapters
    for _, _, gen in gens:
        assert gen.done.wait(60)
    for prompt, adapter, gen in gens:
        assert gen.output_ids == alone[(prompt, adapter)], (prompt, adapter)
    # shared decode steps: far fewer steps than 16 requests x 11 decode steps each
    assert engine.steps - steps_before < 16 * 11 / 2


def test_requests_join_a_running_batch(engine: Engine) -> None:
    long_alone = run(engine, "Tell me about", "pirate", max_tokens=40).output_ids
    short_alone = run(engine, "The chef said", "chef", max_tokens=6).output_ids
    long = generate(engine, "Tell me about", "pirate", max_tokens=40)
    time.sleep(0.05)  # the long one is decoding when the short ones arrive
    shorts = [generate(engine, "The chef said", "chef", max_tokens=6) for _ in range(3)]
    for gen in [long, *shorts]:
        assert gen.done.wait(60)
    assert long.output_ids == long_alone
    assert all(s.output_ids == short_alone for s in shorts)


def test_more_adapters_than_slots(fixture_models: dict[str, Path]) -> None:
    """One resident slot, one CPU-cached adapter: the others are re-read from disk when needed."""
    engine = Engine(fixture_models["base"], max_loras=1, max_cpu_loras=1, max_lora_rank=16)
    try:
        for name in ("pirate", "chef", "space"):
            engine.load_adapter(name, str(fixture_models[name]))
        assert len(engine.cpu_cache) == 1
        reference = Engine(fixture_models["base"], max_loras=4, max_lora_rank=16)
        for name in ("pirate", "chef", "space"):
            reference.load_adapter(name, str(fixture_models[name]))
        expected = {a: run(reference, "Tell me about", a).output_ids for a in ADAPTERS}
        reference.shutdown()
        gens = [(a, generate(engine, "Tell me about", a)) for a in ADAPTERS * 2]
        for adapter, gen in gens:
            assert gen.done.wait(60)
            assert gen.output_ids == expected[adapter], adapter
        assert len(engine.resident) == 1 and len(engine.cpu_cache) <= 1
    finally:
        engine.shutdown()


def test_unknown_adapter_and_unload(engine: Engine) -> None:
    with pytest.raises(UnknownAdapter):
        generate(engine, "hi", "ghost")
    expected = run(engine, "Tell me about", "space", max_tokens=60).output_ids
    running = generate(engine, "Tell me about", "space", max_tokens=60)
    assert wait_until(lambda: len(running.output_ids) > 0)
    engine.unload_adapter("space")  # while it decodes: it finishes on the weights it started with
    assert running.done.wait(60) and running.finish_reason == "length"
    assert running.output_ids == expected
    with pytest.raises(UnknownAdapter):
        generate(engine, "hi", "space")
    with pytest.raises(UnknownAdapter):
        engine.unload_adapter("space")
    assert run(engine, "Tell me about", "pirate").finish_reason == "length"  # others unaffected


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_load_validation(engine: Engine, fixture_models: dict[str, Path], tmp_path: Path) -> None:
    no_config = _copy(fixture_models["pirate"], tmp_path / "no-config")
    (no_config / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        engine.load_adapter("no-config", str(no_config))

    high_rank = _copy(fixture_models["pirate"], tmp_path / "high-rank")
    config = json.loads((high_rank / "adapter_config.json").read_text())
    (high_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    with pytest.raises(AdapterError, match="rank 64, above this engine's max_lora_rank 16"):
        engine.load_adapter("high-rank", str(high_rank))

    tensors = load_file(str(fixture_models["pirate"] / "adapter_model.safetensors"))
    wrong_module = _copy(fixture_models["pirate"], tmp_path / "wrong-module")
    renamed = {k.replace("q_proj", "qkv_fused"): v for k, v in tensors.items()}
    save_file(renamed, str(wrong_module / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="qkv_fused', which is not a linear layer"):
        engine.load_adapter("wrong-module", str(wrong_module))

    wrong_shape = _copy(fixture_models["pirate"], tmp_path / "wrong-shape")
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    save_file({**tensors, key: torch.zeros(8, 32)}, str(wrong_shape / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="expects in_features=64, adapter has lora_A \\[8, 32\\]"):
        engine.load_adapter("wrong-shape", str(wrong_shape))

    with pytest.raises(AdapterError, match="already been loaded"):
        engine.load_adapter("pirate", str(fixture_models["pirate"]))
    assert sorted(engine.adapters) == ["chef", "pirate", "space"]


def test_load_is_fast(fixture_models: dict[str, Path]) -> None:
    from modelyard.engine.fixtures import build_adapter

    engine = Engine(fixture_models["base"], max_loras=2, max_lora_rank=16)
    try:
        path = build_adapter(fixture_models["base"], fixture_models["base"].parent / "rank16", "rank sixteen",
                             rank=16, steps=1)
        started = time.perf_counter()
        engine.load_adapter("rank16", str(path))
        run(engine, "hi", "rank16", max_tokens=1)
        assert time.perf_counter() - started < 1.0  # generous: measured around 10 ms
    finally:
        engine.shutdown()


def test_sampling_parameters(engine: Engine) -> None:
    a = run(engine, "Tell me about", None, temperature=1.0, seed=7, max_tokens=10).output_ids
    b = run(engine, "Tell me about", None, temperature=1.0, seed=7, max_tokens=10).output_ids
    c = run(engine, "Tell me about", None, temperature=1.0, seed=8, max_tokens=10).output_ids
    assert a == b and a != c
    narrow = run(engine, "Tell me about", "pirate", temperature=1.0, top_p=1e-6, seed=3).output_ids
    assert narrow == run(engine, "Tell me about", "pirate").output_ids  # top_p -> only the best token
    full = run(engine, "Tell me about", "pirate", max_tokens=20).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # a string the greedy output is known to contain
    assert len(full) > 6 and stop
    stopped = run(engine, "Tell me about", "pirate", stop=["zzzz-never", stop], max_tokens=20)
    assert stopped.finish_reason == "stop" and stopped.text == full[: full.index(stop)]
    assert "".join(v for k, v in stopped.events if k == "text") == stopped.text
    limited = run(engine, "Tell me about", "pirate", max_tokens=5)
    assert limited.finish_reason == "length" and limited.completion_tokens == 5


@pytest.mark.parametrize("how", ["unload", "replace"])
def test_unloading_an_adapter_that_served_never_breaks_running_requests(
    engine: Engine, fixture_models: dict[str, Path], how: str
) -> None:
    """Regression: the slot of an adapter that had served was cleared in place on an inference
    tensor, which raised in the engine thread and failed every running request, base included."""
    base_alone = run(engine, "Tell me about", None, max_tokens=80).output_ids
    pirate_alone = run(engine, "The chef", "pirate", max_tokens=80).output_ids
    assert run(engine, "Stars and", "chef").finish_reason == "length"  # chef has served: its slot is filled
    base = generate(engine, "Tell me about", None, max_tokens=80)
    pirate = generate(engine, "The chef", "pirate", max_tokens=80)
    assert wait_until(lambda: len(base.output_ids) > 2 and len(pirate.output_ids) > 2)
    if how == "unload":
        engine.unload_adapter("chef")
    else:
        engine.replace_adapter("chef", str(fixture_models["space"]))
    for gen in (base, pirate):
        assert gen.done.wait(60)
        assert [e for e in gen.events if e[0] == "error"] == []  # type: ignore[attr-defined]
    assert base.output_ids == base_alone and pirate.output_ids == pirate_alone
    if how == "replace":  # the new weights answer under the old name
        assert run(engine, "Stars and", "chef").output_ids == run(engine, "Stars and", "space").output_ids
    # the freed slot is reused cleanly by the next adapter load
    engine.load_adapter("late", str(fixture_models["space"]))
    assert run(engine, "Stars and", "late").output_ids == run(engine, "Stars and", "space").output_ids
