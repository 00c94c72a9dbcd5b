"""Packed, chunked prefill on the static cache: waiting prompts are read together in one sequence, a
few tokens per pass, while running rows keep decoding; every row's greedy tokens stay its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.engine.core import Engine
from modelyard.engine.fixtures import SLIDING_WINDOW
from tests.engine.conftest import wait_until
from tests.engine.test_architectures import ADAPTERS, _engine, _finished, _reference, _rows, _submit, models  # noqa: F401


class _Chunked(Engine):
    """Prefill passes of at most 7 tokens (prompts take several, segments of rows share one), counted."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["prefill_chunk"] = 7
        self.passes: list[list[tuple[int, int, int]]] = []
        super().__init__(*args, **kwargs)

    def _prefill_packed(self) -> None:
        self.passes.append([(g.row, g.prefilled, len(g.prompt_ids)) for g in self.prefilling])
        super()._prefill_packed()


@pytest.mark.parametrize("arch", ("llama3", "gemma3", "mistral"))
def test_chunked_packed_prefill_matches_transformers(arch: str, models: dict[str, Path]) -> None:  # noqa: F811
    """Prompts longer than the sliding window, read 7 tokens a pass: alone, all at once (rows packed
    into one pass, a prompt's chunks reading its earlier ones), and joining rows that are decoding."""
    engine = _engine(models, _Chunked)
    try:
        assert engine.fast
        rows = _rows(engine)
        expected = _reference(models, rows)
        alone = [_finished(_submit(engine, ids, adapter, n)) for ids, adapter, n in rows]
        together = [_submit(engine, ids, adapter, n) for ids, adapter, n in rows]
        together = [_finished(g) for g in together]
        # every other row ends at its first token, right after its prefill: its cache row is reused
        short = [_submit(engine, ids, adapter, 1 if i % 2 else n) for i, (ids, adapter, n) in enumerate(rows)]
        short = [_finished(g) for g in short]
        first = _submit(engine, *rows[0])
        assert wait_until(lambda: len(first.output_ids) >= 2 or first.finish_reason, 60)
        joining = [_submit(engine, ids, adapter, n) for ids, adapter, n in rows[1:]]
        joined = [_finished(first)] + [_finished(g) for g in joining]
    finally:
        engine.shutdown()
    assert any(len(p) > 1 for p in engine.passes)  # rows shared passes
    assert max(len(ids) for ids, _, _ in rows) > 2 * SLIDING_WINDOW > 7  # prompts span several passes
    for i, (ids, adapter, _) in enumerate(rows):
        assert alone[i] == expected[i], (arch, adapter, len(ids))
        assert together[i] == expected[i], (arch, adapter, len(ids))
        assert joined[i] == expected[i], (arch, adapter, len(ids))
        tokens, _ = expected[i]
        assert short[i] == (expected[i] if i % 2 == 0 else (tokens[:1], "length") if tokens else ([], "stop"))
