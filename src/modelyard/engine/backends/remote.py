"""Servers someone else runs, known by URL (``engine: remote``).

Typically vLLM with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` behind a Kubernetes service. Modelyard
never starts or stops them: :meth:`RemoteBackend.launch` only checks that the URL answers ``/health``
and serves a model through ``/v1/models``, the handle's :meth:`~RemoteHandle.check` asks ``/health``
again, and :meth:`~RemoteHandle.stop` forgets the server without touching it. Adapters are loaded and
unloaded through the server's runtime LoRA API by :class:`~modelyard.engine.client.EngineClient`, as
for every other engine.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from modelyard.config import Settings
from modelyard.engine.backends.base import Backend, BackendError, ReplicaHandle, ReplicaSpec

CHECK_TIMEOUT = 5.0
"""Seconds one health or model-list request may take."""
LAUNCH_WAIT = 30.0
"""The longest :meth:`RemoteBackend.launch` keeps asking a server that does not answer (a server that
is not up yet is someone else's to start; the supervisor tries again on its next pass)."""
RETRY_EVERY = 0.5


def normalize_url(url: object) -> str:
    """``url`` without a trailing slash; :class:`BackendError` unless it is an http(s) URL with a host."""
    if not isinstance(url, str) or not url.strip():
        raise BackendError("a remote replica needs the server's URL (the endpoint's url)")
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise BackendError(f"remote engine URL '{url}' is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"remote engine URL '{url}' must be http:// or https:// with a host")
    return url


def _reason(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connection timed out after {timeout:g}s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        for _ in range(10):  # httpx wraps the socket's error (in anyio's "all attempts failed")
            if cause is None:
                break
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, socket.gaierror):
                return f"cannot resolve the host ({cause.strerror or cause})"
            cause = cause.__cause__ or cause.__context__
        return f"cannot connect ({exc or type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _health(http: httpx.AsyncClient, url: str, timeout: float) -> str | None:
    """None when ``GET {url}/health`` answers 200; otherwise why not."""
    try:
        response = await http.get(url + "/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return _reason(exc, timeout)
    if response.status_code != 200:
        return f"GET /health answered {response.status_code}"
    return None


async def _served(http: httpx.AsyncClient, url: str, timeout: float) -> tuple[list[str], str | None]:
    """The model ids ``GET {url}/v1/models`` lists, and why it is unusable (None when it serves one)."""
    try:
        response = await http.get(url + "/v1/models", timeout=timeout)
    except httpx.HTTPError as exc:
        return [], f"GET /v1/models: {_reason(exc, timeout)}"
    if response.status_code != 200:
        return [], f"GET /v1/models answered {response.status_code}"
    try:
        data = response.json().get("data")
        models = [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError, TypeError):
        return [], "GET /v1/models did not answer an OpenAI model list"
    if not models:
        return [], "GET /v1/models lists no model"
    return models, None


async def _probe(url: str, timeout: float) -> tuple[list[str], str | None]:
    """One look at a server: its models, and why it cannot be used (None when it can)."""
    async with httpx.AsyncClient() as http:
        problem = await _health(http, url, timeout)
        if problem is not None:
            return [], problem
        return await _served(http, url, timeout)


class RemoteHandle(ReplicaHandle):
    """A server someone else runs. ``alive()`` is the last :meth:`check`'s answer; ``problem`` says
    why the last check failed (None while it answers), for the endpoint's error."""

    backend: ClassVar[str] = "remote"

    def __init__(self, url: str, *, models: list[str] | None = None) -> None:
        self.url = url
        self.node = urlsplit(url).hostname
        self.models: list[str] = list(models or [])
        """What ``/v1/models`` listed when the server was first checked."""
        self.served_name = self.models[0] if self.models else None  # the base model comes first
        self.problem: str | None = None
        self.checked_at: float | None = time.time()
        self._alive = True
        self._stopped = False

    def alive(self) -> bool:
        return self._alive and not self._stopped

    async def check(self) -> bool:
        """``GET /health`` with a short timeout; a failure keeps its reason in ``problem``."""
        if self._stopped:
            return False
        async with httpx.AsyncClient() as http:
            problem = await _health(http, self.url, CHECK_TIMEOUT)
        self.checked_at = time.time()
        self._alive = problem is None
        self.problem = None if problem is None else f"remote engine {self.url}: {problem}"
        return self.alive()

    async def stop(self) -> None:
        """Forget the server: it is not ours to stop, so nothing is sent to it."""
        self._stopped = True

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "served_name": self.served_name}


class RemoteBackend(Backend):
    """Checks, adopts and forgets servers someone else runs; never starts or stops one."""

    name: ClassVar[str] = "remote"
    manages_lifecycle: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def launch(self, spec: ReplicaSpec) -> ReplicaHandle:
        """A handle once ``spec.url`` answers ``/health`` and lists a model; asks again for up to
        ``min(spec.start_timeout, 30)`` seconds, then :class:`BackendError` naming the URL and why."""
        url = normalize_url(spec.url)
        wait = max(0.0, min(spec.start_timeout, LAUNCH_WAIT))
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            models, problem = await _probe(url, max(0.5, min(CHECK_TIMEOUT, left)))
            if problem is None:
                return RemoteHandle(url, models=models)
            if time.monotonic() + RETRY_EVERY > deadline:
                raise BackendError(f"remote engine {url} did not answer within {wait:g}s: {problem}")
            await asyncio.sleep(RETRY_EVERY)

    async def adopt(self, spec: ReplicaSpec, record: dict[str, Any]) -> ReplicaHandle | None:
        """The server at ``record["url"]`` if it answers now (one look, no waiting); None otherwise, and
        None when the endpoint now names another URL."""
        try:
            url = normalize_url(record.get("url"))
            if spec.url and normalize_url(spec.url) != url:
                return None
        except BackendError:
            return None
        models, problem = await _probe(url, CHECK_TIMEOUT)
        return RemoteHandle(url, models=models) if problem is None else None
