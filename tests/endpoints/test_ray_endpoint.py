"""An endpoint placed on a real Ray cluster on this machine (``placement: "ray"``), end to end: a server
whose ``ray_address`` is a local cluster (a head and two worker nodes that differ by a custom resource,
``zone_a`` and ``zone_b``), the endpoint created with Together's SDK, adapters routed through the
gateway with the official OpenAI SDK, a node removed under a running replica, and the endpoint stopped.

Run by ``make test-ray`` (``MODELYARD_TEST_RAY=1``); skipped otherwise, since it starts a Ray cluster.
Every node has one CPU (the machine has two cores): an engine actor asking for ``{"CPU": 1}`` takes a
whole node, so the head's CPU is held by a placeholder actor where the replica must land on a worker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.db.tables import EndpointReplica
from tests.conftest import TRUSTED
from tests.endpoints.test_serving import PROMPT, ask, wait_for
from tests.engine.conftest import ray_cluster

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(os.environ.get("MODELYARD_TEST_RAY") != "1",
                       reason="Ray endpoint tests start a Ray cluster: run them with `make test-ray`"),
]

NAMESPACE = "modelyard"
START = 150.0
"""Seconds an engine replica may take to be placed and answer (two cores, a Ray worker to start)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """The cluster, joined by this process first: the server's Ray backend shares that connection (and
    leaves it open), so the tests can ask Ray about nodes and actors themselves."""
    ray = pytest.importorskip("ray")
    with ray_cluster({"zone_a": 1}, {"zone_b": 1}) as made:
        ray.init(address=made.address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        try:
            yield made
        finally:
            ray.shutdown()


LONG_LEASE = 60.0
"""The lease (so the engines' orphan timeout, two leases) of the tests that are not about it: a Ray
replica's engine is never pinged by its owner and stops itself after its orphan timeout (see
:func:`test_a_ray_replica_is_not_taken_for_an_orphan`), which must not cut the other tests short."""


@pytest.fixture
def lease() -> float:
    """The server's ``lease_seconds`` (a test parametrizes ``lease`` to change it)."""
    return LONG_LEASE


@pytest.fixture
def settings(cluster: Any, tmp_path: Path, lease: float) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'ray.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.3, engine_start_timeout=120,
                    ray_address=cluster.address, ray_namespace=NAMESPACE,
                    lease_seconds=lease)


# ----- helpers -------------------------------------------------------------------------------------


def _zone(resource: str) -> str:
    """The id of the live node that has ``resource``."""
    import ray

    (node_id,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    return node_id


def _live_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _records(app: FastAPI, endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's replica rows' ``record``s, from the server's database."""
    with app.state.db.session() as session:
        rows = session.scalars(select(EndpointReplica).where(EndpointReplica.endpoint_id == endpoint_id)
                               .order_by(EndpointReplica.serial))
        return [dict(row.record) for row in rows]


def _engines(url: str) -> list[int]:
    """Pids of engine servers listening on the port of ``url`` (``pgrep -f`` on their argv)."""
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(["pgrep", "-f", rf"modelyard\.engine .*--port {port}( |$)"],
                           capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def _actor_gone(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def _direct(record: dict[str, Any]) -> openai.OpenAI:
    """The official SDK pointed straight at a replica's engine server (no gateway, no key)."""
    return openai.OpenAI(api_key="unused", base_url=record["url"] + "/v1", max_retries=0, timeout=60)


def _loaded(record: dict[str, Any]) -> set[str]:
    """Adapters the replica's engine serves."""
    listed = httpx.get(record["url"] + "/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in listed if m.get("parent")}


def _create(tg: Together, resources: dict[str, float]) -> Any:
    endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu",
                                   autoscaling={"min_replicas": 1, "max_replicas": 1},
                                   extra_body={"placement": "ray", "resources": resources})
    assert endpoint.state in ("PENDING", "STARTING")
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", START, "the Ray endpoint STARTED")
    started = tg.endpoints.retrieve(endpoint.id)
    assert started.model_extra["placement"] == "ray" and started.model_extra["resources"] == resources
    return started


def _stop(app: FastAPI, tg: Together, endpoint_id: str, record: dict[str, Any]) -> None:
    """Stop the endpoint: its replica's actor and engine are gone, and so is its row."""
    tg.endpoints.update(endpoint_id, state="STOPPED")
    wait_for(lambda: tg.endpoints.retrieve(endpoint_id).state == "STOPPED", 60, "the endpoint STOPPED")
    wait_for(lambda: _actor_gone(record["actor"]), 20, f"actor {record['actor']} gone")
    wait_for(lambda: not _engines(record["url"]), 20, "no engine process left")
    wait_for(lambda: not _records(app, endpoint_id), 10, "the replica row removed")
    assert not app.state.supervisor.pools[endpoint_id].replicas


def _hold_cpu(node_id: str) -> Any:
    """An actor holding the one CPU of ``node_id`` (so replicas asking for a CPU go elsewhere)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class Placeholder:  # local: pickled by value, so Ray's workers need not import this module
        def ready(self) -> bool:
            return True

    holder = ray.remote(Placeholder).options(
        num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    assert ray.get(holder.ready.remote(), timeout=60)
    return holder


# ----- tests ---------------------------------------------------------------------------------------


def test_a_ray_endpoint_runs_where_its_resources_are_and_serves_adapters(
    app: FastAPI, registry: tuple[Modelyard, Together], live_server: str,
) -> None:
    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    zone_b = _zone("zone_b")

    # placed by its custom resource: on the zone_b node, as the row and the live pool both say
    endpoint = _create(tg, {"zone_b": 1})
    (record,) = _records(app, endpoint.id)
    assert record == {"actor": f"modelyard-{endpoint.id}-1", "namespace": NAMESPACE, "url": record["url"],
                      "node": zone_b}
    (replica,) = app.state.supervisor.pools[endpoint.id].replicas
    assert replica.handle.backend == "ray" and replica.handle.node == zone_b and replica.url == record["url"]
    assert len(_engines(record["url"])) == 1
    assert endpoint.model_extra["replicas"] == 1 and endpoint.model_extra["degraded"] is False

    # an adapter attached, routed by the gateway: the same greedy answers as the engine gives directly
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert "pirate" in _loaded(record)
    via_gateway = {"pirate": ask(oa, "pirate"), "base": ask(oa, endpoint.name)}
    direct = _direct(record)
    assert via_gateway == {"pirate": ask(direct, "pirate"), "base": ask(direct, endpoint.name)}
    assert via_gateway["pirate"] != via_gateway["base"]
    assert ask(oa, f"{endpoint.name}:pirate") == via_gateway["pirate"]

    _stop(app, tg, endpoint.id, record)


def test_a_replica_whose_node_dies_moves_to_another_node(
    cluster: Any, app: FastAPI, registry: tuple[Modelyard, Together], live_server: str,
) -> None:
    import ray

    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    head = cluster.head_node.node_id
    holder = _hold_cpu(head)  # the replica lands on a worker (which can be removed), never on the head
    try:
        endpoint = _create(tg, {"CPU": 1})
        (first,) = _records(app, endpoint.id)
        workers = {_zone("zone_a"), _zone("zone_b")}
        assert first["node"] in workers
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
        before = ask(oa, "pirate")
        assert ask(_direct(first), "pirate") == before
        assert len(_engines(first["url"])) == 1

        # its node dies: the endpoint says degraded, then is STARTED again on the other worker
        seen: list[tuple[str, int, bool]] = []

        def moved() -> list[dict[str, Any]]:
            e = tg.endpoints.retrieve(endpoint.id)
            seen.append((e.state, e.model_extra["replicas"], e.model_extra["degraded"]))
            records = _records(app, endpoint.id)
            return (e.state == "STARTED" and not e.model_extra["degraded"] and len(records) == 1
                    and records[0]["node"] != first["node"] and records) or []

        started = time.monotonic()
        cluster.remove_node(next(node for node in cluster.worker_nodes if node.node_id == first["node"]))
        (second,) = wait_for(moved, START, "a replica on another node, STARTED")
        moved_in = time.monotonic() - started
        assert any(degraded for _, _, degraded in seen), seen
        assert not [s for s in seen if s[0] == "STARTED" and s[1] == 0], seen  # never STARTED with nothing
        assert first["node"] not in _live_nodes()
        assert second["node"] == (workers - {first["node"]}).pop() and second["node"] in _live_nodes()
        assert second["actor"] == f"modelyard-{endpoint.id}-2" and second["url"] != first["url"]
        (replica,) = app.state.supervisor.pools[endpoint.id].replicas
        assert replica.handle.node == second["node"] and "pirate" in replica.loaded

        # pirate loaded again, the same greedy answer; nothing of the dead node's engine left
        assert "pirate" in _loaded(second)
        assert ask(oa, "pirate") == before == ask(_direct(second), "pirate")
        wait_for(lambda: not _engines(first["url"]), 15, "the removed node's engine gone")
        assert len(_engines(second["url"])) == 1
        print(f"replica moved in {moved_in:.1f}s")

        _stop(app, tg, endpoint.id, second)
    finally:
        ray.kill(holder, no_restart=True)


@pytest.mark.parametrize("lease", [3.0], ids=["orphan_timeout_6s"])  # engines: orphan timeout 2 x lease
def test_a_ray_replica_is_not_taken_for_an_orphan(
    app: FastAPI, registry: tuple[Modelyard, Together], settings: Settings, lease: float,
) -> None:
    """Its owner checks the replica through its actor: the engine must not stop itself for want of
    the owner's health checks (built-in engines get an orphan timeout of two lease periods)."""
    _, tg = registry
    # any node with a free CPU: the test before may have removed either worker
    endpoint = _create(tg, {"CPU": 1})
    (record,) = _records(app, endpoint.id)
    time.sleep(2 * settings.lease_seconds + 5)
    assert _records(app, endpoint.id) == [record]
    assert httpx.post(record["url"] + "/v1/chat/completions", timeout=30,
                      json={"model": endpoint.name, "messages": PROMPT, "max_tokens": 2}).status_code == 200
    _stop(app, tg, endpoint.id, record)
