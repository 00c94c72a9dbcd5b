"""Prefix caching: prompts that start alike reuse the keys and values of the first one, and every row's
greedy tokens stay transformers/peft's; a block is reused only with the weights that made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.engine.core import Engine
from modelyard.engine.fixtures import SLIDING_WINDOW
from modelyard.engine.prefix import PrefixCache
from tests.engine.test_architectures import TEXTS, _engine, _finished, _reference, _submit, models  # noqa: F401


class _Counting(Engine):
    """Counts the prompt tokens its prefill passes read."""

    def __init__(self, *args, **kwargs) -> None:
        self.read = 0
        super().__init__(*args, **kwargs)

    def _prefill_packed(self) -> None:
        self.read += min(self.prefill_chunk, sum(len(g.prompt_ids) - g.prefilled for g in self.prefilling))
        super()._prefill_packed()


def _prompts(engine: Engine) -> tuple[list[int], list[list[int]]]:
    """A shared preamble of several blocks (longer than the sliding window) and prompts that extend it."""
    tok = engine.tokenizer
    shared = tok(TEXTS[0] + " " + TEXTS[1])["input_ids"]
    assert len(shared) > 2 * engine.prefix.block and len(shared) > SLIDING_WINDOW
    tails = [" What next?", " Tell me about the chef.", " Pirates!"]
    return shared, [shared + tok(tail, add_special_tokens=False)["input_ids"] for tail in tails]


@pytest.mark.parametrize("arch", ("llama3", "gemma3", "mistral"))
def test_a_shared_preamble_is_read_once(arch: str, models: dict[str, Path]) -> None:  # noqa: F811
    """Alone and together, on the base and on adapters: the same tokens as transformers/peft, and
    later prompts read only their own tails (plus the partial block)."""
    engine = _engine(models, _Counting)
    try:
        assert engine.fast and engine.prefix.enabled
        shared, prompts = _prompts(engine)
        rows = [(ids, adapter, 12) for adapter in (None, "pirate") for ids in prompts]
        expected = _reference(models, rows)
        first = _finished(_submit(engine, *rows[0]))
        read = engine.read
        later = [_submit(engine, *row) for row in rows[1:3]]
        results = [first] + [_finished(g) for g in later]
        block = engine.prefix.block
        reused = len(shared) // block * block
        assert [g.cached for g in later] == [reused, reused]
        assert engine.read - read == sum(len(ids) - reused for ids, _, _ in rows[1:3])
        alone = _submit(engine, *rows[3])  # the base's blocks are not the adapter's
        results.append(_finished(alone))
        together = [_submit(engine, *row) for row in rows[4:]]  # the adapter's own blocks are
        results += [_finished(g) for g in together]
        assert alone.cached == 0 and [g.cached for g in together] == [reused, reused]
        assert engine.prefix.hits == 4 * reused
    finally:
        engine.shutdown()
    for i, (ids, adapter, _) in enumerate(rows):
        assert results[i] == expected[i], (arch, adapter, len(ids))


@pytest.mark.parametrize("arch", ("llama3",))
def test_a_replaced_adapter_does_not_reuse_the_old_weights_blocks(arch: str, models: dict[str, Path]) -> None:  # noqa: F811
    engine = _engine(models)
    try:
        _, prompts = _prompts(engine)
        _finished(_submit(engine, prompts[0], "pirate", 8))
        engine.replace_adapter("pirate", str(models["chef"]))
        again = _submit(engine, prompts[1], "pirate", 8)
        result = _finished(again)
        assert again.cached == 0
        chef = _submit(engine, prompts[2], "chef", 8)  # chef's own copy: blocks of its own
        _finished(chef)
    finally:
        engine.shutdown()
    assert result == _reference(models, [(prompts[1], "chef", 8)])[0]


@pytest.mark.parametrize("arch", ("llama3",))
def test_the_budget_holds_and_zero_turns_it_off(arch: str, models: dict[str, Path]) -> None:  # noqa: F811
    engine = _engine(models)
    try:
        _, prompts = _prompts(engine)
        block_bytes = None
        for ids in prompts:
            _finished(_submit(engine, ids, None, 2))
            block_bytes = block_bytes or next(iter(engine.prefix.blocks.values())).bytes
        engine.prefix.budget = 2 * block_bytes
        _finished(_submit(engine, list(reversed(prompts[0])), None, 2))  # new blocks push old ones out
        assert len(engine.prefix.blocks) == 2 and engine.prefix.bytes == 2 * block_bytes
    finally:
        engine.shutdown()
    off = _engine(models, prefix_cache_bytes=0)
    try:
        assert not off.prefix.enabled
        gens = [_submit(off, prompts[0], None, 2) for _ in range(2)]
        assert [_finished(g) for g in gens] and [g.cached for g in gens] == [0, 0] and not off.prefix.blocks
    finally:
        off.shutdown()


def test_a_hash_match_with_other_tokens_is_a_miss() -> None:
    """Blocks are compared token for token, not only by key."""
    import torch

    cache = PrefixCache(1 << 20, block=2)
    kv = [(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))]
    cache.store("base", [1, 2, 3, 4, 5], 0, kv)
    assert len(cache.match("base", [1, 2, 3, 4, 9])) == 2
    assert len(cache.match("base", [1, 2, 3, 4])) == 1  # the last token is always read
    assert cache.match("adapter:7", [1, 2, 3, 4, 5]) == []
    first = next(b for b in cache.blocks.values() if b.tokens == (1, 2))
    first.tokens = (1, 7)  # as if another prompt had collided with this key
    assert cache.match("base", [1, 2, 3, 4, 5]) == []
