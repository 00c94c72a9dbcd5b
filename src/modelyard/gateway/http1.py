"""The gateway's upstream HTTP/1.1 client: keep-alive connections per origin on asyncio protocols,
answers parsed by httptools (the parser uvicorn uses).

Why not aiohttp or httpx: on the gateway's hot path a POST to a provider and the read of its answer
cost about 0.24 ms of CPU through aiohttp's client and several times that through httpx, against
0.06 ms for the same exchange written out by hand (``bench/gateway_overhead.py --target provider``).
What the gateway needs is small: POST a body of bytes, read the status and headers, then the whole
body or its event-stream lines as they come.

The rules:

* A connection serves one exchange at a time. It goes back to its origin's idle list only after a
  complete answer the server agreed to keep alive; anything else (a cut, a parse error, a caller that
  stopped reading, a cancelled task) closes it.
* Idle connections older than ``keepalive`` seconds are closed, not reused: a server's own
  keep-alive timeout (uvicorn's is five seconds) must not close one under a request.
* A request on a reused connection that fails before any byte of an answer came back (the server
  closed it while it sat idle) is sent once more on a new connection.
* Reads time out after ``read_timeout`` seconds without a byte; connects after ``connect_timeout``.
* A large answer is read with back-pressure: reading pauses above ``HIGH_WATER`` bytes buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20
"""Bytes of an answer buffered before the connection stops reading (resumed below a quarter of it)."""
_SKIPPED = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"})
"""Request headers this client writes itself (or never sends)."""


class HttpError(Exception):
    """Any failure of an exchange on the network side."""


class ConnectError(HttpError):
    """No connection could be made."""


class ReadTimeout(HttpError):
    """The answer stopped coming for longer than the read timeout."""


class RemoteProtocolError(HttpError):
    """The server closed the connection, or sent something that is not HTTP/1.1. ``answered``: whether
    any byte of an answer had come (if not, the server cannot have started on the request)."""

    def __init__(self, message: str, *, answered: bool = True) -> None:
        super().__init__(message)
        self.answered = answered


class InvalidRequest(HttpError):
    """A URL or a header value this client will not send (a line break would split the request)."""


@functools.lru_cache(maxsize=4096)
def split_url(url: str) -> tuple[tuple[str, str, int], bytes]:
    """``(scheme, host, port)`` and the request target of ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"cannot send to {url!r}: only http:// and https:// URLs with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in "\r\n "):
        raise InvalidRequest("the URL's path has a space or a line break")
    return (parts.scheme, parts.hostname, port), target.encode("latin-1")


def _host_header(origin: tuple[str, str, int]) -> bytes:
    scheme, host, port = origin
    name = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return (name if port == default else f"{name}:{port}").encode("idna")


class Response:
    """A status, headers, and a body read with :meth:`read` or :meth:`lines` (one or the other)."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: HttpError | None = None
        self.got_bytes = False
        self._released = False

    @property
    def headers(self) -> dict[str, str]:
        """The headers, names lower-cased (the last of a repeated name wins)."""
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}
        return self._headers

    # ----- fed by the connection (protocol callbacks) ----------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: HttpError) -> None:
        if not self.complete and self.error is None:
            self.error = error
            self._wake()

    # ----- read by the caller ----------------------------------------------------------------------

    async def _wait(self) -> None:
        """Until something new arrived (a chunk, the end, a failure) or the read timeout passed."""
        loop = self._connection.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._connection.read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    def _take(self) -> bytes:
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        self._connection.resume_reading()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (the connection is released after a complete one)."""
        try:
            while True:
                if self._chunks:
                    yield self._take()
                    continue
                if self.complete:
                    break
                if self.error is not None:
                    raise self.error
                await self._wait()
        except BaseException:
            self.close()
            raise
        self.release()

    async def read(self) -> bytes:
        """The whole body (the connection is released). A loop, not :meth:`chunks`: an async
        generator per answer costs the event loop's bookkeeping of it."""
        parts: list[bytes] = []
        try:
            while not self.complete:
                if self.error is not None:
                    raise self.error
                if self._connection.paused:  # a large answer: take what is buffered, reading resumes
                    parts.append(self._take())
                else:
                    await self._wait()
        except BaseException:
            self.close()
            raise
        if self._chunks:
            parts.append(self._take())
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each with its ``\\n`` (the last one without, when the body does not
        end with one)."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            start = 0
            while True:
                end = pending.find(b"\n", start)
                if end < 0:
                    break
                yield pending[start:end + 1]
                start = end + 1
            pending = pending[start:]
        if pending:
            yield pending

    def release(self) -> None:
        """Give the connection back when the answer was read whole and may be kept; else close it."""
        if self._released:
            return
        self._released = True
        if self.complete and self.keep_alive and not self._chunks:
            self._connection.idle()
        else:
            self._connection.close()

    def close(self) -> None:
        """Close the connection unless it was released already (then this is nothing)."""
        if not self._released:
            self._released = True
            self._connection.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("ReadTimeout"))


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parser callbacks feed the current :class:`Response`."""

    def __init__(self, pool: Http1Pool, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.alive = True
        self.paused = False
        self.idle_since = 0.0
        self.uses = 0

    # ----- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        response.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(RemoteProtocolError(f"the answer is not valid HTTP/1.1 ({exc})"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool._forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if response.head_done and not self.keep_alive_known_length():
            response._finish()  # a body delimited by the connection's end: this is its end
            return
        if not response.got_bytes:
            response._fail(RemoteProtocolError("the server closed the connection without answering", answered=False))
        else:
            response._fail(RemoteProtocolError("the server closed the connection in the middle of the answer"))

    def keep_alive_known_length(self) -> bool:
        """Whether the answer's length was given (Content-Length or chunked): else it ends at close."""
        headers = self.response.headers if self.response is not None else {}
        return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()

    # ----- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.raw_headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        response.keep_alive = self.parser.should_keep_alive()
        response.head_done = True
        response._wake()

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.response._finish()  # type: ignore[union-attr]

    # ----- used by the pool and the response -------------------------------------------------------

    def send(self, request: bytes) -> Response:
        self.response = Response(self)
        self.uses += 1
        self.transport.write(request)  # type: ignore[union-attr]
        return self.response

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.alive and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def idle(self) -> None:
        self.response = None
        self.idle_since = time.monotonic()
        self.pool._put_back(self)

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.close()


class Http1Pool:
    """Keep-alive connections per origin, made on demand, for the event loop it is used in."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0, keepalive: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(self, origin), host, port,
                ssl=self._ssl_context() if scheme == "https" else None,
                server_hostname=host if scheme == "https" else None,
            ), self.connect_timeout)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        except TimeoutError:
            raise ConnectError(f"no connection to {host}:{port} within {self.connect_timeout:g} s") from None
        self._open.add(connection)
        return connection

    def _checkout(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closed by now
            if connection.alive and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    def _put_back(self, connection: _Connection) -> None:
        if connection.alive:
            self._idle.setdefault(connection.origin, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> Response:
        """Send the request; return once the answer's status and headers are in (its body is read from
        the :class:`Response`, which must be read whole, or closed)."""
        origin, target = split_url(url)
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), target, _host_header(origin))]
        for name, value in headers:
            raw_name = name.encode("latin-1")
            if raw_name.lower() in _SKIPPED:
                continue
            raw_value = value.encode("latin-1") if isinstance(value, str) else value
            if b"\r" in raw_value or b"\n" in raw_value or b"\r" in raw_name or b"\n" in raw_name or b":" in raw_name:
                raise InvalidRequest(f"the header {name[:100]!r} cannot be sent (a line break or a colon)")
            head.append(b"%s: %s\r\n" % (raw_name, raw_value))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        request = b"".join(head) + body
        connection = self._checkout(origin)
        if connection is not None:
            response = connection.send(request)
            try:
                await response.head()
                return response
            except RemoteProtocolError:
                connection.close()
                if response.got_bytes:
                    raise
            except BaseException:
                connection.close()
                raise
            # the server closed the idle connection as the request went out: once more on a new one
        connection = await self._connect(origin)
        response = connection.send(request)
        try:
            await response.head()
        except BaseException:
            connection.close()
            raise
        return response

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the transports close
