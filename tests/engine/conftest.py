from __future__ import annotations

import threading
import time
from collections.abc import Callable

from modelyard.engine.core import Engine, Generation, SamplingParams


def generate(engine: Engine, prompt: str, adapter: str | None, **params) -> Generation:
    """Submit and return the Generation; call ``.done.wait()`` on the result before reading it."""
    done = threading.Event()

    def emit(event: tuple) -> None:
        gen.events.append(event)
        if event[0] in ("done", "error"):
            done.set()

    sampling = SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **params})
    gen = Generation(engine.tokenizer(prompt)["input_ids"], adapter, sampling, emit)
    gen.events = []  # type: ignore[attr-defined]
    gen.done = done  # type: ignore[attr-defined]
    engine.submit(gen)
    return gen


def run(engine: Engine, prompt: str, adapter: str | None, **params) -> Generation:
    gen = generate(engine, prompt, adapter, **params)
    assert gen.done.wait(60), "generation did not finish"  # type: ignore[attr-defined]
    return gen


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
