"""Gateway failover without engines: a replica that is gone before answering is retried once on
another live replica; a stream that is cut or ends without ``[DONE]`` ends with an error event.
Replicas here are small scripted TCP servers (the gateway's own HTTP client talks to them as to an
engine). (The same with real engine processes is in tests/endpoints/test_serving.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from modelyard.endpoints.pool import Lease, Replica, ReplicaPool
from modelyard.engine.backends import ReplicaHandle
from modelyard.engine.client import EngineClient
from modelyard.errors import ApiError
from modelyard.gateway import http1
from modelyard.gateway.router import _relay, _send
from modelyard.observability.metrics import GatewayCall

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


async def read_request(reader: asyncio.StreamReader) -> str:
    """The request's path (its body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return head.split(b" ")[1].decode()


@contextlib.asynccontextmanager
async def scripted_replica(script: Script, calls: list[str]) -> AsyncIterator[Replica]:
    """A replica whose server runs ``script`` on each connection after reading the request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            calls.append(await read_request(reader))
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield Replica(url, FakeHandle(url), EngineClient(url))
    finally:
        server.close()


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


async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"id": "c1", "model": "m", "choices": []}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()


def test_a_replica_refusing_connections_is_retried_on_another() -> None:
    calls: list[str] = []
    supervisor = FakeSupervisor()

    async def go() -> None:
        async with scripted_replica(answer, calls) as good:
            dead = dead_replica()
            pool = pool_of(dead, good)
            lease = await leased(pool, dead)
            client = http1.Http1Pool()
            response = await _send(supervisor, lease, "/v1/completions", {"model": "m"},  # type: ignore[arg-type]
                                    client=client)
            assert lease.replica is good and response.status == 200
            assert (dead.in_flight, good.in_flight) == (0, 1)  # the lease holds it until the answer is read
            assert json.loads(await response.read())["id"] == "c1"
            lease.release()
            assert good.in_flight == 0

    asyncio.run(go())
    assert calls == ["/v1/completions"] and supervisor.wakes == 1


def test_a_replica_that_closes_without_answering_is_retried_on_another() -> None:
    calls: list[str] = []

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return  # the request was read; the connection is closed with no answer (an engine that died)

    async def go() -> None:
        async with scripted_replica(hang_up, calls) as gone, scripted_replica(answer, calls) as good:
            lease = await leased(pool_of(gone, good), gone)
            response = await _send(FakeSupervisor(), lease, "/v1/completions", {},  # type: ignore[arg-type]
                                   client=http1.Http1Pool())
            assert lease.replica is good and response.status == 200
            await response.read()

    asyncio.run(go())
    assert calls == ["/v1/completions", "/v1/completions"]


def test_no_other_live_replica_is_503_with_retry_after() -> None:
    dead, other = dead_replica(), dead_replica()
    other.handle.up = False  # type: ignore[attr-defined]
    pool = pool_of(dead, other)

    async def go() -> None:
        await _send(FakeSupervisor(), await leased(pool, dead), "/v1/completions", {},  # type: ignore[arg-type]
                    client=http1.Http1Pool())

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    error = raised.value
    assert error.status_code == 503 and error.retry_after and error.code == "engine_unavailable"
    assert error.kind == "service_unavailable" and dead.in_flight == 0


def test_only_one_retry() -> None:
    first, second, third = dead_replica(), dead_replica(), dead_replica()
    pool = pool_of(first, second, third)

    async def go() -> None:
        await _send(FakeSupervisor(), await leased(pool, first), "/v1/completions", {},  # type: ignore[arg-type]
                    client=http1.Http1Pool())

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    assert raised.value.status_code == 503 and "retry failed too" in raised.value.message
    assert [r.in_flight for r in pool.replicas] in ([0, 1, 0], [0, 0, 1])  # the lease still holds the last one


def test_a_read_timeout_is_not_retried() -> None:
    """The engine may be generating the answer: sending the request again would run it twice."""
    calls: list[str] = []

    async def slow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def go() -> None:
        async with scripted_replica(slow, calls) as busy, scripted_replica(answer, calls) as other:
            pool = pool_of(busy, other)
            await _send(FakeSupervisor(), await leased(pool, busy), "/v1/completions", {},  # type: ignore[arg-type]
                        client=http1.Http1Pool(read_timeout=0.3))

    with pytest.raises(ApiError) as raised:
        asyncio.run(go())
    assert raised.value.status_code == 503 and "ReadTimeout" in raised.value.message
    assert calls == ["/v1/completions"]


def relayed(chunks: list[bytes], *, cut: bool) -> tuple[list[str], Replica]:
    async def stream(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        if not cut:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        # cut: the connection closes in the middle of the chunked body

    async def go() -> tuple[bytes, Replica]:
        async with scripted_replica(stream, []) as replica:
            lease = await leased(pool_of(replica), replica)
            response = await _send(FakeSupervisor(), lease, "/v1/completions", {},  # type: ignore[arg-type]
                                   client=http1.Http1Pool())
            return b"".join([part async for part in _relay(response, lease, "asked")]), replica

    raw, replica = asyncio.run(go())
    body = raw.decode()
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


def test_a_stream_is_counted_and_its_replica_freed_when_done_is_passed_on() -> None:
    """The engine may close its stream a while after ``[DONE]``; a client that stops reading at
    ``[DONE]`` and asks /metrics (or sends its next request) at once must find this one counted and
    its replica free, not still in flight."""
    closing = asyncio.Event()

    async def stream(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in (CHUNK + b"\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        await closing.wait()  # the end of the body comes only after the client has seen [DONE]
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def go() -> tuple[list[tuple[int, bool]], int]:
        async with scripted_replica(stream, []) as replica:
            lease = await leased(pool_of(replica), replica)
            call = GatewayCall(None, None, "default", "e", None, "asked")
            response = await _send(FakeSupervisor(), lease, "/v1/completions", {},  # type: ignore[arg-type]
                                   client=http1.Http1Pool())
            seen = []
            async for part in _relay(response, lease, "asked", call):
                if part.startswith(b"data: [DONE]"):
                    seen.append((replica.in_flight, call.done))
                    closing.set()
            return seen, call.status

    seen, status = asyncio.run(go())
    assert seen == [(0, True)] and status == 200
