"""The static KV cache path and its fallback: a model without the hooks the static path needs (GPT-2:
fused c_attn, no o_proj) runs on the generic path, with a log line, and still matches transformers;
the KV budget queues a request that does not fit next to the running ones instead of failing it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch

from modelyard.engine.core import Engine, Generation, SamplingParams
from modelyard.engine.fixtures import build_fixture_set, build_tokenizer


def _greedy(engine: Engine, ids: list[int], max_tokens: int) -> Generation:
    done = threading.Event()
    gen = Generation(list(ids), None, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                     lambda event: done.set() if event[0] in ("done", "error") else None)
    gen.done = done  # type: ignore[attr-defined]
    engine.submit(gen)
    return gen


def test_a_model_without_the_hooks_runs_on_the_generic_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    base = tmp_path / "gpt2"
    build_tokenizer(base, 384)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=64, n_layer=2, n_head=2, n_positions=256,
                                       bos_token_id=1, eos_token_id=2))
    model.save_pretrained(base, safe_serialization=True)
    with caplog.at_level(logging.WARNING, logger="modelyard.engine"):
        engine = Engine(base, max_loras=1)
    try:
        assert not engine.fast
        assert any("generic path" in r.getMessage() for r in caplog.records)
        engine.eos_token_ids = set()
        ids = engine.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
        gens = [_greedy(engine, ids[: 6 + i], 12) for i in range(3)]
        for gen in gens:
            assert gen.done.wait(60)  # type: ignore[attr-defined]
        with torch.no_grad():
            for gen in gens:
                out = model.generate(torch.tensor([gen.prompt_ids]), max_new_tokens=12, min_new_tokens=12,
                                     do_sample=False)
                assert gen.output_ids == out[0, len(gen.prompt_ids):].tolist()
    finally:
        engine.shutdown()


def test_the_kv_budget_queues_instead_of_failing(tmp_path: Path) -> None:
    paths = build_fixture_set(tmp_path / "fixtures", adapters=("pirate",), arch="llama3")
    probe = Engine(paths["base"], max_loras=1)
    assert probe.fast
    one_row = probe.kv.bytes_for(1, 128)
    probe.shutdown()
    engine = Engine(paths["base"], max_loras=1, kv_cache_bytes=one_row)  # room for one row of 128 positions
    try:
        engine.eos_token_ids = set()
        ids = engine.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
        alone = _greedy(engine, ids, 20)
        assert alone.done.wait(60)  # type: ignore[attr-defined]
        gens = [_greedy(engine, ids, 20) for _ in range(3)]  # one at a time fits: the others wait
        for gen in gens:
            assert gen.done.wait(60)  # type: ignore[attr-defined]
            assert (gen.output_ids, gen.finish_reason) == (alone.output_ids, "length")
        too_big = _greedy(engine, ids, 400)  # needs more than the whole budget: refused, not queued forever
        assert too_big.done.wait(60) and too_big.finish_reason is None  # type: ignore[attr-defined]
    finally:
        engine.shutdown()
