"""``python -m modelyard.engine``'s options reach the engine; bad values are refused before it loads."""

from __future__ import annotations

import pytest

from modelyard.engine import __main__ as cli


class _Stop(Exception):
    pass


def _options(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, object]:
    seen: dict[str, object] = {}

    def engine(model: str, **options: object) -> None:
        seen.update(options, model=model)
        raise _Stop

    monkeypatch.setattr(cli, "Engine", engine)
    with pytest.raises(_Stop):
        cli.main(["--model", "/m", *argv])
    return seen


def test_prefill_chunk_greedy_head_and_prefix_cache_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _options(monkeypatch)
    assert defaults["prefill_chunk"] == 512 and defaults["greedy_head"] is None
    assert defaults["prefix_cache_bytes"] is None
    chosen = _options(monkeypatch, "--prefill-chunk", "64", "--greedy-head", "off", "--prefix-cache-bytes", "0")
    assert chosen["prefill_chunk"] == 64 and chosen["greedy_head"] is False and chosen["prefix_cache_bytes"] == 0
    assert _options(monkeypatch, "--greedy-head", "on")["greedy_head"] is True


@pytest.mark.parametrize("argv", [["--prefill-chunk", "0"], ["--greedy-head", "maybe"], ["--prefix-cache-bytes", "-1"],
                                  ["--orphan-timeout", "0"]])
def test_bad_values_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--model", "/m", *argv])
    assert exit_.value.code == 2
    assert argv[0] in capsys.readouterr().err
