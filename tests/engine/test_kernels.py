"""The engine's kernels: the greedy output head picks float32's token from a bfloat16 or float16
screen (each one this CPU runs), and ``first_argmax`` is ``argmax``."""

from __future__ import annotations

import pytest
import torch

from modelyard.engine.kernels import GreedyHead, available_screens, first_argmax

SCREENS = available_screens()
screens = pytest.mark.parametrize("screen", SCREENS)


def test_the_preferred_screen_runs_on_this_cpu() -> None:
    """The head built as the engine builds it (no screen named) packs and runs the first screen listed
    (on AVX2-only CPUs oneDNN's bfloat16 reorder raises, so bfloat16 must not be listed there)."""
    if not SCREENS:
        pytest.skip("neither oneDNN bfloat16 nor FBGEMM on this CPU")
    dense = _head(8192, 64)
    head = GreedyHead(dense)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode(), head.picking():
        head(x)
    assert head.screen == SCREENS[0] and head.tokens == _exact(dense, x) and head.screened == 4


def _head(vocab: int, hidden: int, seed: int = 0) -> torch.nn.Linear:
    dense = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed)) * 0.05)
    return dense


def _exact(dense: torch.nn.Linear, x: torch.Tensor) -> list[int]:
    return (x.double() @ dense.weight.detach().double().T).argmax(-1).tolist()


@screens
@pytest.mark.parametrize(("vocab", "hidden"), [(8192, 64), (3000, 48), (1187 * 4, 32)])
def test_greedy_tokens_are_float32_argmax(vocab: int, hidden: int, screen: str) -> None:
    """Random rows at scales from tiny to large: the greedy mode's token is the argmax of the logits,
    nearly always from the screen (a handful of candidate blocks), never a wrong one."""
    dense = _head(vocab, hidden)
    head = GreedyHead(dense, screen=screen)
    assert head.screen == screen
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for scale in (1e-3, 1.0, 30.0):
            x = torch.randn(16, hidden, generator=generator) * scale
            with head.picking():
                out = head(x.unsqueeze(1))  # [rows, 1, hidden], as a decode step calls it
            assert out.shape == (16, 1, 0)
            assert head.tokens == _exact(dense, x) == first_argmax(head(x))
    assert head.screened >= 40 and head.fallbacks <= 8
    assert not head.greedy  # picking() is over: plain logits again
    assert head(x).shape == (16, vocab)


def _screen(weight: torch.Tensor, x: torch.Tensor, screen: str) -> torch.Tensor:
    """What the screen sees: bfloat16 products summed in float32, the sum rounded to bfloat16; or
    float16 weights times the float32 row, summed in float32."""
    if screen == "bfloat16":
        return (weight.bfloat16().float() @ x.bfloat16().float()).bfloat16()
    return weight.half().float() @ x


def _near_tie(screen: str, hidden: int = 64) -> tuple[torch.nn.Linear, torch.Tensor, int, int]:
    """A head where two tokens in different blocks win within the screen's error, and its rounding
    turns the order around: the screen ranks the lower token first, float32 the higher."""
    dense = _head(4096, hidden, seed=3)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(hidden, generator=generator)
    low, high = 700, 3000  # blocks of 256: 2 and 11
    weight = dense.weight.detach()
    with torch.no_grad():
        # bfloat16: scores just above 2 + 2^-7, the midpoint between two bfloat16 values (every random
        # token: 1.4 at most), so a slightly lower score rounds down, a full step below it. float16: the
        # two tokens' weights differ by less than float16's spacing, which decides their order
        weight[low] = x / x.norm() ** 2 * (2 + 2**-7)
        spread = 2e-4 if screen == "bfloat16" else 2e-6
        for _ in range(10_000):
            weight[high] = weight[low] + torch.randn(hidden, generator=generator) * spread
            exact = (weight[[low, high]].double() @ x.double()).tolist()
            screened = _screen(weight[[low, high]], x, screen).tolist()
            if exact[1] > exact[0] and screened[1] < screened[0]:
                return dense, x, low, high
    raise AssertionError("no near tie found")


@screens
def test_a_near_tie_goes_to_float32s_winner(screen: str) -> None:
    dense, x, low, high = _near_tie(screen)
    head = GreedyHead(dense, screen=screen)
    assert head.block == 256 and low // 256 != high // 256
    with torch.inference_mode():
        scores = head.scores(x.unsqueeze(0))[0]
        with head.picking():
            head(x.unsqueeze(0))
        assert _exact(dense, x.unsqueeze(0)) == [high]
        assert int(scores.argmax()) == low and scores[low] > scores[high]  # the screen alone would be wrong
        assert head.tokens == [high] and head.fallbacks == 0


@screens
def test_rows_without_a_clear_winner_use_the_float32_head(screen: str) -> None:
    """Every token scores the same: every block is a candidate, so the full float32 head decides
    (the first of equals, as argmax)."""
    dense = torch.nn.Linear(32, 8192, bias=False)
    with torch.no_grad():
        dense.weight.fill_(0.01)
    head = GreedyHead(dense, screen=screen)
    with torch.inference_mode(), head.picking():
        head(torch.ones(3, 32))
    assert head.tokens == [0, 0, 0] and head.fallbacks == 3 and head.screened == 0


def test_first_argmax_is_argmax() -> None:
    generator = torch.Generator().manual_seed(5)
    for vocab in (262_144, 151_936, 1000, 17):
        logits = torch.randn(5, vocab, generator=generator)
        logits[1, vocab // 2] = logits[1, vocab - 1] = 1e9  # a tie: the first one
        logits[2] = 0.0
        if vocab > 100:
            logits[3, 77] = float("nan")  # argmax's answer for a NaN row: the NaN
        assert first_argmax(logits) == logits.argmax(-1).tolist()


def test_the_float16_screen_leaves_many_rows_to_the_float32_head() -> None:
    """FBGEMM's float16 matmul is slower than the float32 head above 16 rows: those calls skip it."""
    if "float16" not in SCREENS:
        pytest.skip("no FBGEMM on this CPU")
    dense = _head(8192, 64)
    head = GreedyHead(dense, screen="float16")
    x = torch.randn(17, 64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode(), head.picking():
        head(x)
        assert head.tokens == _exact(dense, x) and head.fallbacks == 17 and head.screened == 0
        head(x[:16])
        assert head.tokens == _exact(dense, x[:16]) and head.screened == 16
