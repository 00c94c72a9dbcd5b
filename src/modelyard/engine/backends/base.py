"""The protocol every way of running an engine replica implements.

A :class:`Backend` turns a :class:`ReplicaSpec` into a running, healthy replica and hands back a
:class:`ReplicaHandle`: its URL (everything else talks to the replica over HTTP, vLLM's protocol,
through :class:`~modelyard.engine.client.EngineClient`), its liveness, and how to stop it. A handle
can be written down (:meth:`ReplicaHandle.record`, a small JSON object kept in the database) and a
later process can :meth:`Backend.adopt` it from that record instead of starting a duplicate.

Backends know nothing of endpoints, adapters or the database; the supervisor and the endpoint's
:class:`~modelyard.endpoints.pool.ReplicaPool` decide when to launch, adopt and stop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit


class BackendError(RuntimeError):
    """A replica could not be launched or reached; the message says why (quoting the engine's log)."""


class BackendUnavailable(BackendError):
    """The backend itself cannot be used now (a Ray cluster that does not answer): endpoints wait in
    PENDING until it is back, rather than counting failures toward ERROR."""


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a backend needs to run one replica of one endpoint."""

    endpoint_id: str
    served_name: str
    """The name the engine serves the base model under (the endpoint's name)."""
    engine: str
    """The engine kind (``builtin``, ``vllm``; see :mod:`modelyard.engine.backends.engines`)."""
    serial: int
    """This replica's number within the endpoint (names its log, its Ray actor)."""
    model_path: str | None = None
    """The local checkpoint folder (None for engines someone else runs)."""
    max_loras: int = 4
    max_lora_rank: int = 16
    log_path: Path | None = None
    resources: dict[str, float] = field(default_factory=dict)
    """What a replica needs from a node (``{"CPU": 1}``, ``{"GPU": 1}``, a custom resource)."""
    url: str | None = None
    """For ``remote``: the server this replica is."""
    start_timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the engine process."""
    orphan_timeout: float | None = None
    """Seconds a built-in engine keeps serving without its owner's health checks before it stops itself
    (a replica nobody adopted); None: never."""
    owner: str = ""
    """The server process that owns the replica (sent on its health checks)."""


class ReplicaHandle(abc.ABC):
    """One replica, however it runs. ``alive()`` never does I/O (the gateway calls it per request);
    ``check()`` may (the supervisor calls it each pass) and updates what ``alive()`` answers."""

    backend: ClassVar[str]
    url: str
    log_path: Path | None = None
    node: str | None = None
    """Where it runs, for people: a host, a Ray node id."""
    owner: str = ""
    """The server process that owns the replica; its health checks carry it (see :meth:`ping_as_owner`)."""
    served_name: str | None = None
    """The name the engine serves the base model under, when it is not the endpoint's name (a remote
    server named its model itself); requests for the base model are sent with it."""

    @abc.abstractmethod
    def alive(self) -> bool: ...

    async def check(self) -> bool:
        """Look again (a process poll, a health request, the Ray actor's state); returns ``alive()``."""
        return self.alive()

    async def ping_as_owner(self) -> bool:
        """``GET /health`` with ``X-Modelyard-Owner``: a built-in engine started with an orphan timeout
        counts these, and stops itself when they stop (nobody adopted it). True when it answered 200;
        a slow answer is not a death."""
        return await answers_health(self.url, self.owner, timeout=2.0) if self.owner else False

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the replica (gracefully, then by force); a replica already gone is fine."""

    @abc.abstractmethod
    def record(self) -> dict[str, Any]:
        """A small JSON-able description from which :meth:`Backend.adopt` can find this replica again."""

    @property
    def pid(self) -> int | None:
        """The local process id, for backends that run one on this machine."""
        return None


async def answers_health(url: str, owner: str = "", *, timeout: float = 5.0) -> bool:
    """Whether the engine at ``url`` answers ``GET /health`` with 200 (as ``owner``, when given). One
    plain HTTP/1.1 request on a connection of its own: the owners' pings run every few seconds for every
    replica, and a client per ping (its TLS context, its pool) would cost more than the ping."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        import httpx  # https engines: the full client

        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                headers = {"X-Modelyard-Owner": owner} if owner else None
                return (await http.get(url + "/health", headers=headers)).status_code == 200
        except httpx.HTTPError:
            return False
    host, port = parts.hostname, parts.port or 80
    request = (f"GET {parts.path.rstrip('/')}/health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
               + (f"X-Modelyard-Owner: {owner}\r\n" if owner else "") + "\r\n")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request.encode("latin-1"))
                await writer.drain()
                status = (await reader.readline()).split()
                return len(status) >= 2 and status[1] == b"200"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, UnicodeEncodeError):
        return False


class Backend(abc.ABC):
    """One way of running replicas. One instance per server process (see :func:`~modelyard.engine.
    backends.backend`)."""

    name: ClassVar[str]
    manages_lifecycle: ClassVar[bool] = True
    """False for servers someone else runs: never started or stopped by us."""

    @abc.abstractmethod
    async def launch(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start a replica and return once it answers ``/health``; :class:`BackendError` otherwise
        (leaving nothing running)."""

    @abc.abstractmethod
    async def adopt(self, spec: ReplicaSpec, record: dict[str, Any]) -> ReplicaHandle | None:
        """The replica ``record`` describes, if it still runs and answers; None otherwise."""

    async def close(self) -> None:
        """Release what the backend holds (a Ray connection); replicas keep running."""
