"""The gateway's pooled HTTP client for inference calls: one :class:`~modelyard.gateway.http1.Http1Pool`
per server (per event loop).

Idle connections are dropped after two seconds, before a typical server's keep-alive timeout
(uvicorn's is five), so no request goes out on a connection the other side is closing. Bodies are
bytes made with orjson; the only change made to an answer is its ``model``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelyard.gateway import http1

ERRORS = (http1.HttpError, OSError)
"""What a call through the pool can fail with on the network side."""


class Pool:
    def __init__(self) -> None:
        self._client: http1.Http1Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> http1.Http1Pool:
        """The client, made on first use inside the server's event loop (again if the loop changed:
        connections belong to the loop they were made in, and test clients may run each call in a new one)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._loop = loop
            self._client = http1.Http1Pool(connect_timeout=10.0, read_timeout=600.0, keepalive=2.0)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()


def of(state: Any) -> Pool:
    """The app's pool (``app.state.gateway_pool``), made on first use."""
    pool = getattr(state, "gateway_pool", None)
    if pool is None:
        pool = state.gateway_pool = Pool()
    return pool


def cause(exc: BaseException) -> str:
    """A network failure in words, named as the other clients name it (``ConnectError`` when no
    connection could be made, ``ReadTimeout`` when the answer stopped coming)."""
    if isinstance(exc, http1.ConnectError):
        return f"ConnectError: {exc}"
    if isinstance(exc, http1.ReadTimeout | asyncio.TimeoutError):
        return "ReadTimeout"
    if isinstance(exc, http1.RemoteProtocolError):
        return f"RemoteProtocolError: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
