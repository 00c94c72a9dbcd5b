"""The gateway's HTTP/1.1 client against a real TCP server whose answers each test scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from modelyard.gateway import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """Counts connections; each accepted connection runs ``handler(reader, writer, nth_connection)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    async def main() -> None:
        server: Server

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                body = await server.read_request(reader)
                writer.write(answer(b'{"echo":' + body + b"}"))

        server = Server(echo)
        async with server as url:
            pool = http1.Http1Pool()
            for i in range(3):
                response = await pool.request("POST", url + "/v1/chat/completions?x=1",
                                              [("Content-Type", "application/json"), ("X-N", str(i))], b"%d" % i)
                assert response.status == 200 and response.headers["content-type"] == "application/json"
                assert await response.read() == b'{"echo":%d}' % i
            assert server.connections == 1
            first = server.requests[0]
            assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
            assert b"X-N: 0\r\n" in first and b"Content-Length: 1\r\n" in first
            await pool.close()

    run(main())


def test_chunked_event_stream_read_line_by_line() -> None:
    async def main() -> None:
        async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'data: {"a":', b'1}\n\ndata: [DO', b"NE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await server.read_request(reader)  # the connection is kept for a second request
            writer.write(answer(b"{}"))

        server = Server(stream)
        async with server as url:
            pool = http1.Http1Pool()
            response = await pool.request("POST", url + "/s", [], b"{}")
            lines = [line async for line in response.lines()]
            assert lines == [b'data: {"a":1}\n', b"\n", b"data: [DONE]\n", b"\n"]
            response.close()  # nothing: a complete answer's connection went back to the pool
            again = await pool.request("POST", url + "/s", [], b"{}")
            assert await again.read() == b"{}" and server.connections == 1
            await pool.close()

    run(main())


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def main() -> None:
        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            writer.write(answer(b"{}"))  # keep-alive promised, then closed: a server's idle timeout
            await writer.drain()

        server = Server(once)
        async with server as url:
            pool = http1.Http1Pool()
            assert await (await pool.request("POST", url, [], b"{}")).read() == b"{}"
            await asyncio.sleep(0.05)
            assert await (await pool.request("POST", url, [], b"{}")).read() == b"{}"
            assert server.connections == 2
            await pool.close()

    run(main())


def test_a_reused_connection_closed_as_the_request_goes_out_is_retried_once() -> None:
    async def main() -> None:
        async def racy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> None:
            await server.read_request(reader)
            if nth == 1:
                writer.write(answer(b"{}"))
                await writer.drain()
                await server.read_request(reader)  # the second request arrives, and the server hangs up
                return
            writer.write(answer(b'{"second":true}'))
            await writer.drain()

        server = Server(racy)
        async with server as url:
            pool = http1.Http1Pool()
            await (await pool.request("POST", url, [], b"{}")).read()
            assert await (await pool.request("POST", url, [], b"{}")).read() == b'{"second":true}'
            assert server.connections == 2
            await pool.close()

    run(main())


def test_a_cut_in_the_middle_of_an_answer_is_an_error_and_the_connection_is_dropped() -> None:
    async def main() -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> None:
            await server.read_request(reader)
            if nth == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                await writer.drain()
                return
            writer.write(answer(b"{}"))

        server = Server(cut)
        async with server as url:
            pool = http1.Http1Pool()
            response = await pool.request("POST", url, [], b"{}")
            with pytest.raises(http1.RemoteProtocolError, match="middle of the answer"):
                await response.read()
            assert await (await pool.request("POST", url, [], b"{}")).read() == b"{}"
            assert server.connections == 2
            await pool.close()

    run(main())


def test_a_server_that_closes_without_answering_on_a_new_connection_is_an_error() -> None:
    async def main() -> None:
        async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)

        server = Server(rude)
        async with server as url:
            pool = http1.Http1Pool()
            with pytest.raises(http1.RemoteProtocolError, match="without answering"):
                await pool.request("POST", url, [], b"{}")
            assert server.connections == 1  # a new connection is not retried

    run(main())


def test_read_timeout_and_connect_error() -> None:
    async def main() -> None:
        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            await asyncio.sleep(5)

        server = Server(slow)
        async with server as url:
            pool = http1.Http1Pool(read_timeout=0.2)
            with pytest.raises(http1.ReadTimeout):
                await pool.request("POST", url, [], b"{}")
        closed = http1.Http1Pool(connect_timeout=2)
        with pytest.raises(http1.ConnectError):
            await closed.request("POST", url, [], b"{}")  # the server is gone: refused

    run(main())


def test_a_body_delimited_by_close_and_connection_close_answers_are_not_reused() -> None:
    async def main() -> None:
        async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> None:
            await server.read_request(reader)
            if nth == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            else:
                writer.write(answer(b"{}", b"Connection: close"))
            await writer.drain()

        server = Server(old)
        async with server as url:
            pool = http1.Http1Pool()
            assert await (await pool.request("POST", url, [], b"")).read() == b"until the end"
            assert await (await pool.request("POST", url, [], b"")).read() == b"{}"
            assert await (await pool.request("POST", url, [], b"")).read() == b"{}"
            assert server.connections == 3

    run(main())


def test_idle_connections_older_than_keepalive_are_not_used() -> None:
    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                writer.write(answer(b"{}"))

        server = Server(echo)
        async with server as url:
            pool = http1.Http1Pool(keepalive=0.1)
            await (await pool.request("POST", url, [], b"{}")).read()
            await asyncio.sleep(0.2)
            await (await pool.request("POST", url, [], b"{}")).read()
            assert server.connections == 2
            await pool.close()

    run(main())


def test_a_large_answer_is_read_whole_with_back_pressure() -> None:
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB

    async def main() -> None:
        async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            for _ in range(2):
                writer.write(answer(big))
                await writer.drain()
                await server.read_request(reader)
            writer.write(answer(b"{}"))

        server = Server(large)
        async with server as url:
            pool = http1.Http1Pool()
            response = await pool.request("POST", url, [], b"{}")
            received = 0
            async for chunk in response.chunks():
                received += len(chunk)
                await asyncio.sleep(0)  # a slow reader
            assert received == len(big)
            whole = await pool.request("POST", url, [], b"{}")  # read() in one go: paused, resumed, whole
            assert await whole.read() == big
            assert await (await pool.request("POST", url, [], b"{}")).read() == b"{}"
            assert server.connections == 1
            await pool.close()

    run(main())


def test_a_reader_that_stops_early_closes_the_connection() -> None:
    async def main() -> None:
        async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            if nth == 1:
                await asyncio.sleep(5)
            writer.write(b"0\r\n\r\n")

        server = Server(stream)
        async with server as url:
            pool = http1.Http1Pool()
            response = await pool.request("POST", url, [], b"{}")
            chunks = response.chunks()
            assert await chunks.__anext__() == b"hello"
            await chunks.aclose()
            again = await pool.request("POST", url, [], b"{}")
            assert await again.read() == b"hello"
            assert server.connections == 2

    run(main())


def test_what_cannot_be_sent_is_refused_before_anything_goes_out() -> None:
    async def main() -> None:
        pool = http1.Http1Pool()
        with pytest.raises(http1.InvalidRequest):
            await pool.request("POST", "http://127.0.0.1:1/x", [("X-Bad", "a\r\nInjected: 1")], b"")
        with pytest.raises(http1.InvalidRequest):
            await pool.request("POST", "ftp://example.com/x", [], b"")
        with pytest.raises(http1.InvalidRequest):
            await pool.request("POST", "http://127.0.0.1:1/a b", [], b"")

    run(main())
