"""The ``ray`` backend on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
a head and two nodes that differ by a custom resource (``zone_a``, ``zone_b``), so placement, a node's
death and the replacement replica are all observable.

Run by ``make test-ray`` (``MODELYARD_TEST_RAY=1``); skipped otherwise, since it starts Ray clusters.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.engine.backends import BackendError, Backends, BackendUnavailable, ReplicaSpec
from modelyard.engine.client import EngineClient
from tests.engine.conftest import ray_cluster

on_ray = pytest.mark.skipif(os.environ.get("MODELYARD_TEST_RAY") != "1",
                            reason="Ray backend tests start Ray clusters: run them with `make test-ray`")


def _engines(port: int) -> list[int]:
    """Pids of engine servers listening on ``port`` (their argv says so), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelyard.engine" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
            found.append(int(entry.name))
    return found


def _engines_serving(name: str) -> list[int]:
    """Pids of engine servers serving ``name``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"modelyard.engine" in argv and name.encode() in argv:
            found.append(int(entry.name))
    return found


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    pytest.importorskip("ray")
    with ray_cluster({"zone_a": 1}, {"zone_b": 1}) as made:
        yield made


@pytest.fixture(scope="module")
def backends(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """The backends of one server process, connected to ``cluster`` (before any test calls Ray itself,
    which would otherwise start a Ray of its own); disconnected before the cluster stops."""
    made = Backends(Settings(home=tmp_path_factory.mktemp("ray-home"), ray_address=cluster.address))
    asyncio.run(made.get("ray").connect())  # type: ignore[attr-defined]
    yield made
    asyncio.run(made.close())


def _spec(fixture_models: dict[str, Path], logs: Path, serial: int, resources: dict[str, float],
          **changes: Any) -> ReplicaSpec:
    fields: dict[str, Any] = {"model_path": str(fixture_models["base"]), "max_loras": 2, "max_lora_rank": 8,
                              "log_path": logs / f"replica-{serial}.log", "start_timeout": 120}
    return ReplicaSpec(**{"endpoint_id": "endpoint-ray", "served_name": "tiny-ray", "engine": "builtin",
                          "serial": serial, "resources": resources, **fields, **changes})


@pytest.mark.ray
@on_ray
def test_placement_node_death_replacement_and_adoption(
        cluster: Any, backends: Backends, fixture_models: dict[str, Path], tmp_path: Path) -> None:
    import ray

    backend = backends.get("ray")

    async def scenario() -> None:
        # a replica that needs zone_b runs on the zone_b node and serves completions
        first = await backend.launch(_spec(fixture_models, tmp_path, 1, {"zone_b": 1}))
        nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
        zone_b = next(node_id for node_id, resources in nodes.items() if "zone_b" in resources)
        assert first.node == zone_b and first.alive()
        assert first.backend == "ray" and first.record() == {
            "actor": "modelyard-endpoint-ray-1", "namespace": "modelyard", "url": first.url, "node": zone_b}
        async with EngineClient(first.url) as engine:
            answer = await engine.create("/v1/completions", {"model": "tiny-ray", "prompt": "Tell me about",
                                                             "max_tokens": 4, "temperature": 0})
        assert answer["usage"]["completion_tokens"] > 0
        assert await first.check()
        assert len(_engines(_port(first.url))) == 1

        # adopted from its record by another server process: the same replica
        adopted = await Backends(backends.settings).get("ray").adopt(_spec(fixture_models, tmp_path, 1, {}),
                                                                     first.record())
        assert adopted is not None and adopted.url == first.url and adopted.node == zone_b

        # the zone_b node dies: the replica is seen dead within seconds, and its engine died with it
        started = time.monotonic()
        cluster.remove_node(next(node for node in cluster.worker_nodes if node.node_id == zone_b))
        while await first.check():
            assert time.monotonic() - started < 10, "check() still says alive 10 s after the node died"
            await asyncio.sleep(0.2)
        assert not first.alive()
        assert _until(lambda: not _engines(_port(first.url)), 10), "the dead node's engine is still running"
        assert await backend.adopt(_spec(fixture_models, tmp_path, 1, {}), first.record()) is None
        await first.stop()  # already gone: fine

        # its replacement, with resources any node has, lands on a live node
        second = await backend.launch(_spec(fixture_models, tmp_path, 2, {"CPU": 1}))
        live = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert second.node in live and second.node != zone_b
        async with EngineClient(second.url) as engine:
            assert await engine.health()

        # its actor killed from outside: the engine goes with it, and nothing is left to adopt
        ray.kill(ray.get_actor("modelyard-endpoint-ray-2", namespace="modelyard"))
        assert _until(lambda: not _engines(_port(second.url)), 10), "a killed actor's engine is still running"
        assert not await second.check()
        assert await backend.adopt(_spec(fixture_models, tmp_path, 2, {}), second.record()) is None

        # stopped through its handle: engine and actor gone
        third = await backend.launch(_spec(fixture_models, tmp_path, 3, {"zone_a": 1}))
        assert third.node not in (zone_b, None) and len(_engines(_port(third.url))) == 1
        await third.stop()
        assert not third.alive() and not _engines(_port(third.url))
        assert await backend.adopt(_spec(fixture_models, tmp_path, 3, {}), third.record()) is None

    asyncio.run(scenario())


@pytest.mark.ray
@on_ray
def test_a_failed_start_quotes_the_log_and_leaves_no_actor(
        backends: Backends, fixture_models: dict[str, Path], tmp_path: Path) -> None:
    import ray

    spec = _spec(fixture_models, tmp_path, 4, {"zone_a": 1}, model_path=str(tmp_path / "no-such-model"))
    with pytest.raises(BackendError) as failed:
        asyncio.run(backends.get("ray").launch(spec))
    assert "modelyard-endpoint-ray-4" in str(failed.value) and "no-such-model" in str(failed.value)

    def gone() -> bool:
        try:
            ray.get_actor("modelyard-endpoint-ray-4", namespace="modelyard")
        except ValueError:
            return True
        return False

    assert _until(gone, 10), "the failed replica's actor is still there"


@pytest.mark.ray
@on_ray
def test_an_abandoned_launch_leaves_no_actor_and_no_engine(
        backends: Backends, fixture_models: dict[str, Path], tmp_path: Path) -> None:
    import ray

    spec = _spec(fixture_models, tmp_path, 5, {"zone_a": 1}, served_name="tiny-abandoned")

    async def abandon() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(backends.get("ray").launch(spec), 0.5)  # well before the engine is up

    asyncio.run(abandon())

    def gone() -> bool:
        try:
            ray.get_actor("modelyard-endpoint-ray-5", namespace="modelyard")
        except ValueError:
            return not _engines_serving("tiny-abandoned")
        return False

    assert _until(gone, 15), "an abandoned launch left its actor or engine behind"


@pytest.mark.ray
@on_ray
def test_an_unreachable_cluster_is_unavailable_naming_it(fixture_models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    backend = Backends(Settings(home=tmp_path, ray_address="127.0.0.1:1")).get("ray")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="127.0.0.1:1"):
        asyncio.run(backend.launch(_spec(fixture_models, tmp_path, 1, {})))
    assert time.monotonic() - started < 15


def test_without_ray_installed_the_backend_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    backend = Backends(Settings(home=tmp_path, ray_address="127.0.0.1:6379")).get("ray")
    spec = ReplicaSpec(endpoint_id="e", served_name="tiny", engine="builtin", serial=1, model_path=str(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"modelyard\[ray\]"):
        asyncio.run(backend.launch(spec))
