"""Only the engine thread runs the model's multi-threaded work (see ``Engine._run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# In a fresh process (no thread has OpenMP workers yet): build an engine, load an adapter and generate
# from this (the main) thread, then run one parallel operation here. If nothing before it started
# workers on this thread, that operation adds this thread's first worker (threads - 1 of them).
SCRIPT = r"""
import json, os, sys, threading
import torch
torch.set_num_threads(2)
from modelyard.engine.core import Engine, Generation, SamplingParams

def tasks():
    return len(os.listdir("/proc/self/task"))

base, adapter, build_on_main = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if build_on_main:  # the mutation this test must catch: heavy work on the constructing thread
    torch.ones(1 << 22).add_(1)
engine = Engine(base, max_loras=2, max_lora_rank=16)
engine.load_adapter("a", adapter)
done = threading.Event()
gen = Generation(engine.tokenizer("Tell me about")["input_ids"], "a", SamplingParams(max_tokens=4, temperature=0.0),
                 lambda event: done.set() if event[0] in ("done", "error") else None)
engine.submit(gen)
assert done.wait(60)
before = tasks()
torch.ones(1 << 22).add_(1)  # an OpenMP parallel region on this thread
print(json.dumps({"added": tasks() - before, "engine_threads": engine.threads, "tokens": len(gen.output_ids)}))
engine.shutdown()
"""


def _run(fixture_models: dict[str, Path], build_on_main: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(fixture_models["base"]), str(fixture_models["pirate"]),
                          "1" if build_on_main else "0"], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_the_constructing_thread_starts_no_openmp_workers(fixture_models: dict[str, Path]) -> None:
    result = _run(fixture_models, build_on_main=False)
    assert result["engine_threads"] == 2 and result["tokens"] == 4
    assert result["added"] == 1, result  # this thread's first worker: the engine ran nothing parallel here
    # and the probe sees it when this thread did start workers
    assert _run(fixture_models, build_on_main=True)["added"] == 0


def test_a_model_that_cannot_load_raises_on_the_callers_thread(tmp_path: Path) -> None:
    import threading

    from modelyard.engine.core import Engine

    (tmp_path / "config.json").write_text("{not json")
    engines = {t.ident for t in threading.enumerate() if t.name == "engine"}
    with pytest.raises((OSError, ValueError)):
        Engine(tmp_path)
    assert {t.ident for t in threading.enumerate() if t.name == "engine"} <= engines  # its thread has ended
