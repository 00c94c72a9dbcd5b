"""The engine on the architectures users bring: tiny Llama 3, Qwen 2.5, Gemma 3 and Mistral checkpoints.

Each fixture is the family's real ``transformers`` config class at tiny size, with its special
tokens, chat template and ``generation_config.json`` (see :mod:`modelyard.engine.fixtures`). Gemma 3
mixes sliding-window (16 positions) and full-attention layers; every Mistral layer slides. Prompts
are longer than the window and generations run well past it.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from modelyard.engine.core import Engine, Generation, SamplingParams
from modelyard.engine.fixtures import (
    ARCHITECTURES,
    CHAT_EXAMPLE,
    SLIDING_WINDOW,
    build_fixture_set,
    chat_prompt,
)
from tests.engine.conftest import run, wait_until

ARCHS = ("llama3", "qwen2", "gemma3", "mistral")
SLIDING = ("gemma3", "mistral")
ADAPTERS = ("pirate", "chef", "chat")
TEXTS = [  # 30 to 60 tokens each: longer than the sliding window
    "The quick brown fox jumps over the lazy dog. Stars and planets drift through the silent dark of space.",
    "Modelyard serves many adapters from one base model. A model registry keeps track of its checkpoints.",
    "The chef cooks pasta with tomatoes, garlic and fresh basil. Pirates sail the seven seas",
]

_sets: dict[str, dict[str, Path]] = {}


@pytest.fixture
def models(arch: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if arch not in _sets:  # built once per run and architecture
        _sets[arch] = build_fixture_set(tmp_path_factory.mktemp(f"fixtures-{arch}"), arch=arch)
    return _sets[arch]


def _engine(models: dict[str, Path], cls: type[Engine] = Engine, **options: object) -> Engine:
    engine = cls(models["base"], max_loras=len(ADAPTERS), max_lora_rank=8, **options)
    for name in ADAPTERS:
        engine.load_adapter(name, str(models[name]))
    return engine


def _submit(engine: Engine, ids: list[int], adapter: str | None, max_tokens: int) -> Generation:
    done = threading.Event()
    gen = Generation(list(ids), adapter, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                     lambda event: done.set() if event[0] in ("done", "error") else None)
    gen.done = done  # type: ignore[attr-defined]
    engine.submit(gen)
    return gen


def _finished(gen: Generation) -> tuple[list[int], str | None]:
    assert gen.done.wait(120), "generation did not finish"  # type: ignore[attr-defined]
    return gen.output_ids, gen.finish_reason


def _rows(engine: Engine) -> list[tuple[list[int], str | None, int]]:
    """(prompt ids, adapter, max_tokens): long prompts on the base and two adapters, and the chat turn
    on the chat adapter; max_tokens differ so rows leave the batch at different steps."""
    tok = engine.tokenizer
    prompts = [tok(text)["input_ids"] for text in TEXTS]
    assert all(len(p) > SLIDING_WINDOW for p in prompts), [len(p) for p in prompts]
    rows = [(prompts[i], adapter, 24 + 8 * ((i + j) % 3))
            for i in range(len(prompts)) for j, adapter in enumerate((None, "pirate", "chef"))]
    rows.append((tok(chat_prompt(tok))["input_ids"], "chat", 48))
    return rows


def _reference(models: dict[str, Path], rows: list[tuple[list[int], str | None, int]]) -> list[tuple[list[int], str]]:
    """transformers' own greedy generate (peft for adapters), one row at a time, with the checkpoint's
    generation_config (its eos ids) and no repetition penalty; the stop token is not part of the output."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32)
    eos = base.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    model = PeftModel.from_pretrained(base, models[ADAPTERS[0]], adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.load_adapter(models[name], adapter_name=name)
    model.eval()
    expected = []
    for ids, adapter, max_tokens in rows:
        kwargs = {"input_ids": torch.tensor([ids]), "max_new_tokens": max_tokens, "do_sample": False,
                  "repetition_penalty": 1.0}
        with torch.no_grad():
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(**kwargs)
            else:
                model.set_adapter(adapter)
                out = model.generate(**kwargs)
        new = out[0, len(ids):].tolist()
        if new and new[-1] in eos:
            expected.append((new[:-1], "stop"))
        else:
            expected.append((new, "length"))
    return expected


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_config_is_read(arch: str, models: dict[str, Path]) -> None:
    """Every eos id of generation_config.json, and its sampling defaults as vLLM applies them."""
    spec = ARCHITECTURES[arch]
    engine = Engine(models["base"], max_loras=1)
    try:
        tok = engine.tokenizer
        assert engine.eos_token_ids == {tok.convert_tokens_to_ids(t) for t in spec.stop_tokens}
        assert tok.eos_token_id in engine.eos_token_ids
        wanted = {k: v for k, v in spec.sampling.items() if k in ("temperature", "top_p", "top_k", "repetition_penalty")}
        assert engine.generation_defaults == wanted
    finally:
        engine.shutdown()


@pytest.mark.parametrize("arch", ["llama3"])
def test_eos_ids_without_generation_config(arch: str, models: dict[str, Path], tmp_path: Path) -> None:
    """No generation_config.json: the config's eos ids (one or a list) and the tokenizer's; no defaults."""
    base = tmp_path / "base"
    shutil.copytree(models["base"], base)
    (base / "generation_config.json").unlink()
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "eos_token_id": [4, 5]}))
    engine = Engine(base, max_loras=1)
    try:
        assert engine.eos_token_ids == {engine.tokenizer.eos_token_id, 4, 5}
        assert engine.generation_defaults == {}
    finally:
        engine.shutdown()


@pytest.mark.parametrize("greedy_head", [False, True], ids=["float32-head", "greedy-head"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_parity_alone_batched_and_transformers(arch: str, greedy_head: bool, models: dict[str, Path]) -> None:
    """Alone, in a mixed batch that requests join and leave past the window, and in transformers/peft's
    own generate: the same tokens and the same stopping point, row for row; with the float32 head's
    logits and with the head's greedy mode (bfloat16 screen, float32 rescoring), which must be used."""
    engine = _engine(models, greedy_head=greedy_head)
    assert (engine.greedy_head is not None) == greedy_head
    try:
        rows = _rows(engine)
        expected = _reference(models, rows)
        assert max(len(ids) for ids, _ in expected) > SLIDING_WINDOW  # generations run past the window
        alone = [_finished(_submit(engine, ids, adapter, n)) for ids, adapter, n in rows]
        first = [_submit(engine, ids, adapter, n) for ids, adapter, n in rows[::2]]
        # the second wave joins a batch that is already past the window
        assert wait_until(lambda: all(len(g.output_ids) >= 4 or g.finish_reason for g in first), 60)
        second = [_submit(engine, ids, adapter, n) for ids, adapter, n in rows[1::2]]
        batched = [None] * len(rows)
        batched[::2] = [_finished(g) for g in first]
        batched[1::2] = [_finished(g) for g in second]
    finally:
        engine.shutdown()
    if greedy_head:  # every token of these greedy rows came from the greedy mode, none from full logits
        assert engine.greedy_head.screened == sum(len(tokens) + (why == "stop") for tokens, why in alone + batched)
    for i, (ids, adapter, _) in enumerate(rows):
        assert alone[i] == expected[i], (arch, adapter, len(ids))
        assert batched[i] == expected[i], (arch, adapter, len(ids))


@pytest.mark.parametrize("arch", ("llama3", "qwen2", "gemma3"))
def test_stops_on_the_end_of_turn_token(arch: str, models: dict[str, Path]) -> None:
    """The chat adapter answers and closes its turn with <|eot_id|> / <|im_end|> / <end_of_turn>: an eos
    id of generation_config.json that is not the tokenizer's eos_token. (Mistral closes turns with the
    tokenizer's </s>, so it has no such token.)"""
    engine = _engine(models)
    try:
        tok = engine.tokenizer
        end_of_turn = tok.convert_tokens_to_ids(ARCHITECTURES[arch].end_of_turn)
        assert end_of_turn != tok.eos_token_id
        gen = run(engine, chat_prompt(tok), "chat", max_tokens=64)
        assert (gen.finish_reason, gen.text) == ("stop", CHAT_EXAMPLE[1]["content"])
        assert end_of_turn not in gen.output_ids and end_of_turn in engine.eos_token_ids
        assert run(engine, chat_prompt(tok), "chat", max_tokens=5).finish_reason == "length"
    finally:
        engine.shutdown()


class _Recording(Engine):
    """Records, after every decode step (on the engine thread), the batch's columns (positions) and
    each cache layer's stored positions: the static cache's buffers, or the generic path's cache."""

    def _decode_step(self) -> None:
        super()._decode_step()
        if self.cache is not None:
            self.trace.append((self.mask.shape[1], [(layer.is_sliding, layer.keys.shape[2]) for layer in self.cache.layers]))

    def _decode_static(self) -> None:
        columns = max(g.position for g in self.running) + 1
        super()._decode_static()
        self.trace.append((columns, [(w is not None, k.shape[2]) for w, k in zip(self.kv.windows, self.kv.keys)]))


@pytest.mark.parametrize("arch", SLIDING)
def test_sliding_layers_hold_at_most_the_window(arch: str, models: dict[str, Path]) -> None:
    """Through joins past the window and departures, each sliding layer stores at most the window per
    row while full layers (Gemma 3's) keep every position, and every output equals the row's own."""
    engine = _engine(models, _Recording)
    engine.trace = []  # type: ignore[attr-defined]
    try:
        tok = engine.tokenizer
        prompts = [tok(text)["input_ids"] for text in TEXTS] + [tok("Stars and")["input_ids"]]
        plan = [(prompts[0], None, 96), (prompts[1], "pirate", 64), (prompts[3], "chef", 8), (prompts[2], None, 40)]
        # the long row leaves first: the short one goes on in a batch of a few columns, then past the window
        plan_b = [(prompts[0], None, 2), (prompts[3], "chef", 40)]
        alone = [_finished(_submit(engine, *row)) for row in plan + plan_b]
        engine.trace.clear()  # type: ignore[attr-defined]
        long = _submit(engine, *plan[0])
        assert wait_until(lambda: len(long.output_ids) >= SLIDING_WINDOW + 4 or long.finish_reason, 60)
        others = [_submit(engine, *row) for row in plan[1:]]  # join past the window; the short one leaves early
        results = [_finished(g) for g in [long, *others]]
        results += [_finished(g) for g in [_submit(engine, *row) for row in plan_b]]
    finally:
        engine.shutdown()
    assert results == alone
    config = engine.model.config
    kinds = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers  # Mistral
    trace = engine.trace  # type: ignore[attr-defined]
    assert len(trace) > 4 * SLIDING_WINDOW and max(columns for columns, _ in trace) > 4 * SLIDING_WINDOW
    for columns, layers in trace:
        for kind, (is_sliding, length) in zip(kinds, layers, strict=True):
            assert is_sliding == (kind == "sliding_attention")  # every rebuilt cache keeps each layer's kind
            assert length <= SLIDING_WINDOW if is_sliding else length >= columns
    if arch == "gemma3":  # its full-attention layers keep every position
        assert max(length for _, layers in trace for is_sliding, length in layers if not is_sliding) > 4 * SLIDING_WINDOW
