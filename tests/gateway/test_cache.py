"""The gateway's name cache: one database read per key at a time, errors remembered, expiry honoured."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.errors import ApiError
from modelyard.gateway.cache import TtlCache


def test_concurrent_misses_share_one_read() -> None:
    async def scenario() -> tuple[list[int], int]:
        cache: TtlCache[int] = TtlCache(ttl=60)
        reads = 0

        async def load() -> int:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.05)
            return 7

        values = await asyncio.gather(*(cache.get("k", load) for _ in range(32)))
        return values, reads

    values, reads = asyncio.run(scenario())
    assert values == [7] * 32 and reads == 1


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_remembered_errors_are_raised_to_each_caller_and_expire() -> None:
    async def scenario() -> int:
        cache: TtlCache[int] = TtlCache(ttl=0.05)
        reads = 0

        async def load() -> int:
            nonlocal reads
            reads += 1
            raise ApiError(404, "The model `ghost` does not exist.", code="model_not_found")

        for _ in range(3):
            with pytest.raises(ApiError) as caught:
                await cache.get("ghost", load, remember=ApiError)
            assert caught.value.status_code == 404
            assert len(list(_frames(caught.value.__traceback__))) < 10  # tracebacks do not pile up
        assert reads == 1
        await asyncio.sleep(0.06)
        with pytest.raises(ApiError):
            await cache.get("ghost", load, remember=ApiError)
        return reads

    assert asyncio.run(scenario()) == 2


def test_other_errors_and_cancellation_are_not_cached() -> None:
    async def scenario() -> list[object]:
        cache: TtlCache[int] = TtlCache(ttl=60)
        calls: list[str] = []

        async def boom() -> int:
            calls.append("boom")
            raise RuntimeError("database down")

        with pytest.raises(RuntimeError):
            await cache.get("k", boom, remember=ApiError)

        started = asyncio.Event()

        async def slow() -> int:
            calls.append("slow")
            started.set()
            await asyncio.sleep(10)
            return 1

        async def fast() -> int:
            calls.append("fast")
            return 2

        first = asyncio.create_task(cache.get("k", slow))
        await started.wait()
        waiter = asyncio.create_task(cache.get("k", fast))
        await asyncio.sleep(0)
        first.cancel()  # the request that was reading went away: the waiter reads for itself
        return [await waiter, calls]

    value, calls = asyncio.run(scenario())
    assert value == 2 and calls == ["boom", "slow", "fast"]
