"""The one piece of code that talks to an engine: the built-in one, vLLM, or a remote URL.

The gateway, the supervisor, the tests and the benches all use :class:`EngineClient`, so every
engine is driven the same way over vLLM's protocol. Loading an adapter runs our own file checks
first (:func:`~modelyard.engine.adapter_files.read_adapter_config`): a folder that cannot work is
refused with our message before the engine sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import httpx

from modelyard.engine.adapter_files import AdapterError, read_adapter_config

__all__ = ["AdapterError", "EngineClient", "EngineError"]


class EngineError(Exception):
    """The engine answered with an error (``status`` is its HTTP status; 503 when it is unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(response: httpx.Response) -> str:
    """The human message out of an OpenAI- or vLLM-shaped error body, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return response.text.strip()


KEEPALIVE = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=2.0)


class EngineClient:
    """Async client for one engine replica at ``base_url`` (e.g. ``http://127.0.0.1:8001``)."""

    def __init__(self, base_url: str, *, http: httpx.AsyncClient | None = None, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = http is None
        # idle connections are dropped well before the engine's own keep-alive timeout (uvicorn's: 5 s),
        # so a request never goes out on a connection the engine is closing; enough of them stay open
        # for the gateway's concurrency not to open a new connection per request
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=KEEPALIVE)

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, self.base_url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineError(503, f"engine at {self.base_url} is unreachable: {exc}") from None
        if response.status_code >= 400:
            raise EngineError(response.status_code, _message(response))
        return response

    async def health(self) -> bool:
        """True when the engine answers ``GET /health`` with 200."""
        try:
            response = await self.http.get(self.base_url + "/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the base model first, then loaded adapters with ``parent`` set."""
        return (await self._request("GET", "/v1/models")).json()["data"]

    async def adapters(self) -> set[str]:
        return {m["id"] for m in await self.models() if m.get("parent")}

    async def load_adapter(self, name: str, path: str, *, max_rank: int, inplace: bool = False) -> None:
        """Check the adapter's files, then ``POST /v1/load_lora_adapter``; ``inplace`` swaps new
        weights in under a loaded name (vLLM's ``load_inplace``).

        Raises :class:`AdapterError` (our check failed; nothing was sent) or :class:`EngineError`.
        """
        read_adapter_config(name, path, max_rank=max_rank)
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True
        await self._request("POST", "/v1/load_lora_adapter", json=body)

    async def unload_adapter(self, name: str) -> None:
        await self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed ``/v1/completions`` or ``/v1/chat/completions`` call."""
        return (await self._request("POST", path, json=body)).json()

    async def send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """Send a request and hand back the response unread, whatever its status, so a proxy can
        pass it on byte for byte (server-sent events included). The caller must ``aclose()`` it."""
        request = self.http.build_request("POST", self.base_url + path, json=body)
        try:
            return await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EngineError(503, f"engine at {self.base_url} is unreachable: {exc}") from None

    @asynccontextmanager
    async def open(self, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """:meth:`send` as a context manager that closes the response."""
        response = await self.send(path, body)
        try:
            yield response
        finally:
            await response.aclose()
