"""Call the app's own API in-process, as the console's visitor.

The console never reads the database for what it shows: it calls the same routes an SDK would, with
the visitor's key in ``Authorization``, so every permission check is the API's own. The call goes
through the whole middleware stack (host check, authentication, audit, request boundary) by invoking
the ASGI app with a synthetic scope; no socket is involved.

The response body is fed into an :class:`asyncio.Queue` by the ASGI ``send`` callable, so a caller
can read it as it is produced (the playground relays token streams this way; httpx's ASGI transport
would wait for the whole body). A request body can be streamed too (file uploads are relayed chunk by
chunk, never held in memory).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.types import ASGIApp, Message

_DONE = object()


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def message(self) -> str:
        """The API's own error message, whatever the route family's error shape."""
        return error_message(self.status, self.body)


def error_message(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or f"HTTP {status}"
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict) and data["error"].get("message"):
            return str(data["error"]["message"])
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail:  # validation errors: field: message
            parts = []
            for item in detail[:3]:
                if isinstance(item, dict):
                    where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                    parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            return "; ".join(parts) or f"HTTP {status}"
        if isinstance(data.get("message"), str):
            return data["message"]
    return f"HTTP {status}"


@dataclass
class StreamedResponse:
    """A response whose headers have arrived; :meth:`chunks` yields the body as the app sends it."""

    status: int
    headers: dict[str, str]
    _queue: asyncio.Queue[Any] = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _closed: asyncio.Event = field(repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item:
                    yield item
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        self._closed.set()  # the app sees the client go away (http.disconnect) if it is still sending
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # noqa: BLE001 - the app's own failure was already answered as a 500
                return


class ApiCaller:
    """The API as the visitor of ``request`` sees it with ``key``."""

    def __init__(self, request: Request, key: str | None) -> None:
        self.request = request
        self.key = key
        self.app: ASGIApp = request.app

    def _scope(self, method: str, path: str, query: dict[str, Any] | None, headers: dict[str, str]) -> dict[str, Any]:
        outer = self.request.scope
        base = {
            "host": self.request.headers.get("host", "127.0.0.1"),
            "user-agent": "modelyard-console",
            "accept": "application/json",
        }
        if self.key:
            base["authorization"] = f"Bearer {self.key}"
        forwarded = self.request.headers.get("x-request-id")
        if forwarded:
            base["x-request-id"] = forwarded
        base.update({k.lower(): v for k, v in headers.items()})
        query_string = urlencode({k: v for k, v in (query or {}).items() if v is not None}, doseq=True)
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": outer.get("http_version", "1.1"),
            "method": method.upper(),
            "scheme": outer.get("scheme", "http"),
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query_string.encode(),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in base.items()],
            "client": outer.get("client") or ("127.0.0.1", 0),
            "server": outer.get("server") or ("127.0.0.1", 80),
            "extensions": {},
            "state": dict(outer.get("state") or {}),
        }

    async def open(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                   json_body: Any = None, body: bytes | AsyncIterator[bytes] | None = None,
                   headers: dict[str, str] | None = None) -> StreamedResponse:
        """Start the call; answer once the response's headers are sent (the body is still streaming)."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("content-type", "application/json")
        if isinstance(body, bytes):
            headers.setdefault("content-length", str(len(body)))
        scope = self._scope(method, path, query, headers)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        started: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.get_running_loop().create_future()
        closed = asyncio.Event()
        source = _BodySource(body)

        async def receive() -> Message:
            if not source.done:
                chunk, more = await source.next()
                return {"type": "http.request", "body": chunk, "more_body": more}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                if not started.done():
                    started.set_result((message["status"], hdrs))
            elif message["type"] == "http.response.body":
                await queue.put(message.get("body", b""))
                if not message.get("more_body", False):
                    await queue.put(_DONE)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:  # handed to whoever waits
                if not started.done():
                    started.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                else:
                    await queue.put(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
            finally:
                await queue.put(_DONE)
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))

        task = asyncio.create_task(run())
        status, hdrs = await started
        return StreamedResponse(status, hdrs, queue, task, closed)

    async def call(self, method: str, path: str, *, query: dict[str, Any] | None = None, json_body: Any = None,
                   body: bytes | AsyncIterator[bytes] | None = None,
                   headers: dict[str, str] | None = None) -> ApiResponse:
        """The whole response (for JSON routes)."""
        response = await self.open(method, path, query=query, json_body=json_body, body=body, headers=headers)
        return ApiResponse(response.status, response.headers, await response.read())

    async def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.call("GET", path, **kwargs)


class _BodySource:
    def __init__(self, body: bytes | AsyncIterator[bytes] | None) -> None:
        self.iterator = body if body is not None and not isinstance(body, bytes) else None
        self.single = body if isinstance(body, bytes) else b""
        self.done = False

    async def next(self) -> tuple[bytes, bool]:
        if self.iterator is None:
            self.done = True
            return self.single, False
        try:
            chunk = await self.iterator.__anext__()  # type: ignore[union-attr]
            return chunk, True
        except StopAsyncIteration:
            self.done = True
            return b"", False
