"""The pool's routing rules without engines: adapters spread evenly over replicas (the same in every
process), each request for an adapter goes to its home unless that one is much busier, leases count
requests in flight and hand a stream's release over."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from modelyard.endpoints.pool import NoReplica, Replica, ReplicaPool, homes
from modelyard.engine.backends import ReplicaHandle
from modelyard.engine.client import EngineClient


class Handle(ReplicaHandle):
    def __init__(self, url: str) -> None:
        self.url = url
        self.up = True

    def alive(self) -> bool:
        return self.up

    async def stop(self) -> None:
        self.up = False

    def record(self) -> dict[str, Any]:
        return {}


def pool_of(count: int, adapters: list[str], spill: int = 4) -> ReplicaPool:
    pool = ReplicaPool("ep", spill=spill)
    for i in range(count):
        url = f"http://127.0.0.1:{9000 + i}"
        pool.add(Replica(f"replica-{i}", Handle(url), EngineClient(url)))
    pool.place(adapters)
    return pool


ADAPTERS = [f"lora-{i:02d}" for i in range(12)]


def test_adapters_spread_evenly_and_the_same_everywhere() -> None:
    ids = [f"replica-{i}" for i in range(3)]
    placed = homes(ADAPTERS, ids)
    assert sorted(placed) == ADAPTERS and set(Counter(placed.values()).values()) == {4}
    shuffled = ADAPTERS[:]
    random.Random(3).shuffle(shuffled)
    assert homes(shuffled, reversed(ids)) == placed  # another process, other orders: the same homes
    fewer = homes(ADAPTERS, ids[:2])
    assert max(Counter(fewer.values()).values()) == 6
    assert homes(ADAPTERS[:5], ids) and max(Counter(homes(ADAPTERS[:5], ids).values()).values()) == 2
    assert homes(ADAPTERS, []) == {}


def test_requests_go_home_unless_it_is_much_busier() -> None:
    pool = pool_of(3, ADAPTERS, spill=2)
    placed = homes(ADAPTERS, [r.id for r in pool.replicas])
    for name in ADAPTERS:
        assert pool.pick(name).id == placed[name]
    home = next(r for r in pool.replicas if r.id == placed["lora-00"])
    home.in_flight = 1
    assert pool.pick("lora-00") is home  # busier by less than the spill: still home
    home.in_flight = 2
    assert pool.pick("lora-00") is not home  # busier by the spill: the least loaded
    assert pool.pick("attached-just-now") is not None  # not placed yet: its hash
    assert pool.pick(None).in_flight == 0  # the base model: the least loaded
    home.in_flight = 0
    home.handle.up = False  # type: ignore[attr-defined]
    moved = pool.pick("lora-00")
    assert moved is not home and moved.id == homes(ADAPTERS, [r.id for r in pool.replicas if r.alive()])["lora-00"]


def test_least_loaded_when_affinity_is_off() -> None:
    pool = pool_of(3, ADAPTERS)
    pool.affinity = False
    pool.replicas[0].in_flight = 3
    pool.replicas[1].in_flight = 1
    assert pool.pick("lora-00") is pool.replicas[2]


def test_leases_count_in_flight_and_a_kept_one_is_released_by_its_holder() -> None:
    pool = pool_of(2, ADAPTERS)

    async def go() -> None:
        async with pool.lease("lora-01") as lease:
            assert pool.in_flight == 1 and lease.replica is not None
        assert pool.in_flight == 0
        async with pool.lease("lora-01") as lease:
            lease.keep()  # a stream: released when the relay ends
        assert pool.in_flight == 1
        lease.release()
        assert pool.in_flight == 0 and pool.served == 2
        empty = ReplicaPool("none")
        with pytest.raises(NoReplica):
            async with empty.lease(wait=0.2):
                pass
        assert empty.waiting == 0

    asyncio.run(go())
