"""The gateway's pooled HTTP client for inference calls: one aiohttp session per server.

aiohttp's client is what the gateway's hot path uses (httpx's pool costs several times more CPU per
request and grows with concurrency: see ``bench/gateway_overhead.py --target provider``). Idle
connections are dropped after two seconds, before a typical server's keep-alive timeout (uvicorn's
is five), so no request goes out on a connection the other side is closing. Bodies are bytes made
with orjson; the only change made to an answer is its ``model``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
"""What a call through the pool can fail with on the network side."""


class Pool:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use inside the server's event loop (again if the loop changed:
        a session belongs to the loop it was made in, and test clients may run each call in a new one)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0, ttl_dns_cache=300,
                                             enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=2**20, max_line_size=2**20,
                max_field_size=2**16, timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0),
                skip_auto_headers=("User-Agent",), json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()


def of(state: Any) -> Pool:
    """The app's pool (``app.state.gateway_pool``), made on first use."""
    pool = getattr(state, "gateway_pool", None)
    if pool is None:
        pool = state.gateway_pool = Pool()
    return pool


def cause(exc: BaseException) -> str:
    """A network failure in words, named as the other clients name it (``ConnectError`` when no
    connection could be made, ``ReadTimeout`` when the answer stopped coming)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"ConnectError: {exc.os_error or exc}"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "ReadTimeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "RemoteProtocolError: the server closed the connection without answering"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
