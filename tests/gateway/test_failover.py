"""Gateway failover without engines: a replica that is gone before answering is retried once on
another live replica; a stream that is cut or ends without ``[DONE]`` ends with an error event.
(The same with real engine processes is in tests/endpoints/test_serving.py.)"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from modelyard.endpoints.pool import Lease, Replica, ReplicaPool
from modelyard.engine.backends import ReplicaHandle
from modelyard.engine.client import EngineClient
from modelyard.errors import ApiError
from modelyard.gateway.router import _relay, _send


@dataclass
class FakeHandle(ReplicaHandle):
    url: str = ""
    up: bool = True

    def alive(self) -> bool:
        return self.up

    async def stop(self) -> None:
        self.up = False

    def record(self) -> dict[str, str]:
        return {}


class FakeSupervisor:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def closed_port_url() -> str:
    """A URL where nothing listens: connecting is refused, as with a replica that just died."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def dead_replica() -> Replica:
    url = closed_port_url()
    return Replica(url, FakeHandle(url), EngineClient(url))


def mock_replica(handler: Callable[[httpx.Request], httpx.Response], calls: list[str]) -> Replica:
    def counted(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(counted))
    return Replica(f"replica-{len(calls)}-{id(http)}", FakeHandle(), EngineClient("http://replica", http=http))


def pool_of(*replicas: Replica) -> ReplicaPool:
    pool = ReplicaPool("ep")
    for replica in replicas:
        pool.add(replica)
    return pool


async def leased(pool: ReplicaPool, replica: Replica) -> Lease:
    """A lease on ``replica`` (as if the pool had picked it)."""
    lease = pool.lease()
    lease._take(replica)
    return lease


def answer(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "c1", "model": "m", "choices": []})


def test_a_replica_refusing_connections_is_retried_on_another() -> None:
    calls: list[str] = []
    dead, good = dead_replica(), mock_replica(answer, calls)
    pool = pool_of(dead, good)
    supervisor = FakeSupervisor()

    async def go() -> None:
        lease = await leased(pool, dead)
        response = await _send(supervisor, lease, "/v1/completions", {"model": "m"})  # type: ignore[arg-type]
        assert lease.replica is good and response.status_code == 200
        assert (dead.in_flight, good.in_flight) == (0, 1)  # the lease holds it until the answer is read
        await response.aclose()
        lease.release()
        assert good.in_flight == 0

    asyncio.run(go())
    assert calls == ["/v1/completions"] and supervisor.wakes == 1


def test_no_other_live_replica_is_503_with_retry_after() -> None:
    dead, other = dead_replica(), dead_replica()
    other.handle.up = False  # type: ignore[attr-defined]
    pool = pool_of(dead, other)

    async def go() -> None:
        await _send(FakeSupervisor(), await leased(pool, dead), "/v1/completions", {})  # type: ignore[arg-type]

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    error = raised.value
    assert error.status_code == 503 and error.retry_after and error.code == "engine_unavailable"
    assert error.kind == "service_unavailable" and dead.in_flight == 0


def test_only_one_retry() -> None:
    first, second, third = dead_replica(), dead_replica(), dead_replica()
    pool = pool_of(first, second, third)

    async def go() -> None:
        await _send(FakeSupervisor(), await leased(pool, first), "/v1/completions", {})  # type: ignore[arg-type]

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    assert raised.value.status_code == 503 and "retry failed too" in raised.value.message
    assert [r.in_flight for r in pool.replicas] in ([0, 1, 0], [0, 0, 1])  # the lease still holds the last one


def test_a_read_timeout_is_not_retried() -> None:
    """The engine may be generating the answer: sending the request again would run it twice."""
    calls: list[str] = []

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    busy, other = mock_replica(slow, calls), mock_replica(answer, calls)
    pool = pool_of(busy, other)

    async def go() -> None:
        await _send(FakeSupervisor(), await leased(pool, busy), "/v1/completions", {})  # type: ignore[arg-type]

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    assert raised.value.status_code == 503 and calls == ["/v1/completions"]


class CutStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], cut: bool) -> None:
        self.chunks, self.cut = chunks, cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.cut:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def relayed(chunks: list[bytes], *, cut: bool) -> tuple[list[str], Replica]:
    def stream(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=CutStream(chunks, cut))

    replica = mock_replica(stream, [])

    async def go() -> bytes:
        lease = await leased(pool_of(replica), replica)
        response = await _send(FakeSupervisor(), lease, "/v1/completions", {})  # type: ignore[arg-type]
        return b"".join([part async for part in _relay(response, lease, "asked")])

    body = asyncio.run(go()).decode()
    # SSE: events are separated by a blank line; an event's data is its data: lines joined by "\n"
    events = ["\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
              for block in body.split("\n\n")]
    return [e for e in events if e], replica


CHUNK = b'data: {"id": "c1", "model": "m", "choices": [{"text": "hi"}]}\n'


@pytest.mark.parametrize("cut_after", [CHUNK, CHUNK + b"\n"], ids=["inside-an-event", "between-events"])
def test_a_cut_stream_ends_with_an_error_event_of_its_own_and_done(cut_after: bytes) -> None:
    events, replica = relayed([cut_after], cut=True)
    assert json.loads(events[0])["model"] == "asked"
    error = json.loads(events[-2])["error"]  # a whole event: not glued onto the cut chunk
    assert error["code"] == "engine_unavailable" and "stopped while streaming" in error["message"]
    assert events[-1] == "[DONE]" and replica.in_flight == 0


def test_a_stream_that_ends_without_done_says_so() -> None:
    events, replica = relayed([CHUNK + b"\n"], cut=False)
    assert json.loads(events[-2])["error"]["code"] == "engine_unavailable" and events[-1] == "[DONE]"
    events, _ = relayed([CHUNK + b"\n", b"data: [DONE]\n\n"], cut=False)
    assert events[-1] == "[DONE]" and len(events) == 2 and replica.in_flight == 0
