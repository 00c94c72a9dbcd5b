from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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


@contextlib.contextmanager
def ray_cluster(*nodes: dict[str, float]) -> Iterator[Any]:
    """A Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head with one CPU, plus one node
    with one CPU per entry of ``nodes`` (its custom resources); every node is stopped afterwards."""
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        for resources in nodes:
            cluster.add_node(**small, resources=resources)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
