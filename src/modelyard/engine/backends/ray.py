"""Replicas as Ray actors, on the nodes of a Ray cluster (``placement: ray``).

Each replica is one named, detached actor (``modelyard-{endpoint}-{serial}`` in the settings' namespace)
that Ray places on a node with the endpoint's resources free. The actor starts the same engine server
the local backend runs (:data:`~modelyard.engine.backends.engines.ENGINES`), on a free port of its node,
and everything else reaches that server over HTTP at ``http://{node ip}:{port}``, as for any replica.
The actor is the engine's keeper, not its proxy: it exists so that Ray chooses the node, accounts the
resources, and tells us when the node is gone.

* The engine never outlives its actor: it is started with the parent-death signal set to SIGKILL
  (Linux), so a node that dies or an actor Ray kills takes its engine along, and the actor's ``stop``
  kills the engine's process group first.
* Actors are detached and never restarted by Ray (``max_restarts=0``): a replica whose node died is
  replaced by the supervisor, which launches a new one that Ray places on a live node.
* Detached actors survive this server: a record (actor name, namespace, URL, node) lets a server started
  again adopt them.

Ray is imported on first use only, so Modelyard runs without it; every Ray call blocks and runs in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import anyio

from modelyard.config import Settings
from modelyard.engine.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ReplicaHandle,
    ReplicaSpec,
    answers_health,
)
from modelyard.engine.backends.engines import ENGINES
from modelyard.engine.process import EngineProcess, EngineStartError, free_port

CONNECT_TIMEOUT = 30.0
"""Seconds ``ray.init`` may take; Ray itself keeps retrying an unanswering cluster for minutes."""
PROBE_TIMEOUT = 5.0
"""Seconds to open a TCP connection to the cluster's address before handing it to Ray."""
PING_TIMEOUT = 3.0
"""Seconds an actor has to answer ``check()``; silence counts as dead (the supervisor replaces it)."""
STOP_GRACE = 10.0
"""Seconds the engine has to exit on SIGTERM before the actor SIGKILLs its process group."""
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def _parent_death_kill() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGKILL the child when its parent (the actor) dies.

    libc's ``prctl`` is looked up here, before the fork: the child, forked from a threaded Ray worker,
    only makes the one call. None where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    kill = 9  # SIGKILL

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, kill)

    return set_parent_death_signal


class ReplicaActor:
    """The actor that keeps one engine server on its node (made a Ray actor class in
    :meth:`RayBackend.launch`).

    Its methods run on the worker's main thread (the default one-at-a-time actor), which matters: the
    parent-death signal fires when the thread that forked the engine exits, and this one lives as long
    as the actor's process."""

    def __init__(self) -> None:
        self.process: EngineProcess | None = None
        self.node: str | None = None

    def start(self, spec: ReplicaSpec, settings: Settings) -> dict[str, Any]:
        """Start the engine on a free port of this node and wait for ``/health``; the replica's info, or
        ``{"error": ...}`` quoting the engine's log (a value, not an exception: Ray would wrap it)."""
        import ray

        host = ray.util.get_node_ip_address()
        self.node = ray.get_runtime_context().get_node_id()
        port = free_port(host)
        argv, env = ENGINES[spec.engine].command(spec, host, port, settings)
        log_path = spec.log_path or settings.home / "logs" / "engines" / f"{spec.endpoint_id}-{spec.serial}.log"
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        process = EngineProcess(argv=argv, url=url, log_path=log_path, env=env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process.proc = subprocess.Popen(  # argv built by us, never a shell
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_parent_death_kill(),  # noqa: PLW1509 - one prctl call
            )
        self.process = process
        try:
            process.wait_healthy(spec.start_timeout)
        except EngineStartError as exc:
            process.stop(grace=2.0)
            return {"error": str(exc), "node": self.node}
        return self.info()

    def info(self) -> dict[str, Any]:
        """Where the engine is and whether its process still runs (the handle's ``check()``)."""
        process = self.process
        return {"url": process.url if process else None, "node": self.node,
                "pid": process.pid if process else None, "alive": bool(process and process.alive())}

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the engine's process group, SIGKILL it after ``grace`` seconds."""
        if self.process is not None:
            self.process.stop(grace=grace)


def _kill(ray: Any, actor: Any) -> None:
    """Kill an actor, already gone or not."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


def _host_port(address: str) -> tuple[str, int] | None:
    """Host and port of a ``host:port`` or ``ray://host:port`` address; None when there is none to probe."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


class RayHandle(ReplicaHandle):
    backend: ClassVar[str] = "ray"

    def __init__(self, backend: RayBackend, actor: Any, *, name: str, namespace: str, url: str,
                 node: str | None, log_path: Path | None = None) -> None:
        self._backend = backend
        self._actor = actor
        self.name = name
        self.namespace = namespace
        self.url = url
        self.node = node
        self.log_path = log_path
        self._alive = True
        self._dead = False
        """Ray said the actor died: it never comes back (``max_restarts=0``), so no more pings."""

    def alive(self) -> bool:
        return self._alive and not self._dead

    async def check(self) -> bool:
        if not self._dead:
            self._alive = await anyio.to_thread.run_sync(self._ping)
        return self.alive()

    def _ping(self) -> bool:
        ray = self._backend._module()
        if ray is None:
            return False
        try:
            info = ray.get(self._actor.info.remote(), timeout=PING_TIMEOUT)
        except ray.exceptions.ActorDiedError:
            self._dead = True
            return False
        except Exception:  # noqa: BLE001 - a timeout, a lost connection, unavailable for now
            return False
        return bool(info.get("alive"))

    async def stop(self) -> None:
        self._alive = False
        if self._dead:
            return
        try:
            ray = await self._backend._connected()  # again, if the backend was closed meanwhile
        except BackendUnavailable as exc:
            log.warning("cannot stop Ray replica %s: %s", self.name, exc)
            return
        await anyio.to_thread.run_sync(self._stop, ray)

    def _stop(self, ray: Any) -> None:
        with contextlib.suppress(Exception):  # gone already, or not answering: killed below either way
            ray.get(self._actor.stop.remote(STOP_GRACE), timeout=STOP_GRACE + 5)
        _kill(ray, self._actor)
        self._dead = True

    def record(self) -> dict[str, Any]:
        return {"actor": self.name, "namespace": self.namespace, "url": self.url, "node": self.node}


class _Launch:
    """One launch's actor, shared between the thread that makes it and a cancelled caller that must
    kill it: whichever comes second does the killing, so an abandoned launch leaves no actor."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actor: Any = None
        self.abandoned = False


class RayBackend(Backend):
    name: ClassVar[str] = "ray"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._ray: Any = None
        """The ``ray`` module once connected (None before, and after :meth:`close`)."""
        self._owns = False
        """Whether we called ``ray.init`` (and so call ``ray.shutdown``)."""
        self._init: threading.Thread | None = None
        self._init_error: BaseException | None = None

    # -- connection ---------------------------------------------------------------------------------

    def _module(self) -> Any:
        return self._ray

    async def connect(self) -> None:
        """Join the cluster now rather than on first use (to fail fast at start-up; tests that call Ray
        themselves); :class:`BackendUnavailable` naming the address when it cannot be done."""
        await self._connected()

    async def _connected(self) -> Any:
        if self._ray is not None and self._ray.is_initialized():
            return self._ray
        return await anyio.to_thread.run_sync(self._connect)

    def _connect(self) -> Any:
        """Import Ray and join the cluster, once; :class:`BackendUnavailable` naming the address when
        that cannot be done now (the supervisor keeps endpoints PENDING and tries again)."""
        try:
            import ray
        except ImportError:
            raise BackendUnavailable(
                "placement 'ray' needs Ray, which is not installed: pip install 'modelyard[ray]'") from None
        address = self.settings.ray_address
        with self._lock:
            if self._ray is not None and ray.is_initialized():
                return self._ray
            self._ray = None  # never connected, or whoever connected this process has disconnected it
            if not address:
                raise BackendUnavailable("placement 'ray' needs a Ray cluster: set MODELYARD_RAY_ADDRESS "
                                         "(host:6379 or ray://host:10001)")
            if self._init is None:
                self._probe(address)
            if self._init is None and ray.is_initialized():
                # this process joined a cluster already (another backend instance, an embedding
                # application): share its connection, and leave ray.shutdown to whoever made it
                self._ray, self._owns = ray, False
                return ray
            if self._init is None:
                self._init_error = None
                self._init = threading.Thread(target=self._init_ray, args=(ray, address), daemon=True,
                                              name="modelyard-ray-init")
                self._init.start()
            # ray.init retries an unanswering cluster for minutes and cannot be interrupted: wait a
            # bounded time, and let a later call find the result of an attempt still under way
            self._init.join(CONNECT_TIMEOUT)
            if self._init.is_alive():
                raise BackendUnavailable(f"the Ray cluster at {address} did not answer within "
                                         f"{CONNECT_TIMEOUT:.0f}s")
            self._init = None
            if self._init_error is not None:
                error, self._init_error = self._init_error, None
                with contextlib.suppress(Exception):
                    ray.shutdown()
                raise BackendUnavailable(f"cannot connect to the Ray cluster at {address}: {error}")
            self._ray, self._owns = ray, True
            return ray

    def _init_ray(self, ray: Any, address: str) -> None:
        try:
            ray.init(address=address, namespace=self.settings.ray_namespace, log_to_driver=False,
                     logging_level=logging.WARNING)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller waiting in _connect
            self._init_error = exc

    @staticmethod
    def _probe(address: str) -> None:
        """Fail fast on an address nothing listens at (Ray would retry it for minutes)."""
        target = _host_port(address)
        if target is None:
            return
        try:
            socket.create_connection(target, timeout=PROBE_TIMEOUT).close()
        except OSError as exc:
            raise BackendUnavailable(f"the Ray cluster at {address} is unreachable: {exc}") from None

    async def close(self) -> None:
        ray, owns = self._ray, self._owns
        self._ray, self._owns = None, False
        if ray is not None and owns:
            await anyio.to_thread.run_sync(ray.shutdown)

    # -- replicas -----------------------------------------------------------------------------------

    @staticmethod
    def actor_name(spec: ReplicaSpec) -> str:
        return f"modelyard-{spec.endpoint_id}-{spec.serial}"

    @staticmethod
    def _options(spec: ReplicaSpec) -> dict[str, Any]:
        """Ray's actor options for the spec's resources: CPU and GPU by their own names, others custom."""
        resources = dict(spec.resources) or {"CPU": 1}
        options: dict[str, Any] = {"num_cpus": resources.pop("CPU", 0), "num_gpus": resources.pop("GPU", 0)}
        if resources:
            options["resources"] = resources
        return options

    def _engine_settings(self) -> Settings:
        """The settings an engine's command reads, for the actor: only those, since task arguments are
        kept by Ray and the rest hold the database URL and keys."""
        return Settings.model_construct(home=self.settings.home, vllm_python=self.settings.vllm_python)

    async def launch(self, spec: ReplicaSpec) -> ReplicaHandle:
        if spec.engine not in ENGINES:
            raise BackendError(f"unknown engine '{spec.engine}'")
        if not spec.model_path:
            raise BackendError("a Ray replica needs the model's checkpoint folder")
        ray = await self._connected()
        await anyio.to_thread.run_sync(self._probe, self.settings.ray_address)  # still there?
        launch = _Launch()
        try:
            info = await anyio.to_thread.run_sync(self._launch, ray, spec, launch, abandon_on_cancel=True)
        except BaseException:
            with launch.lock:
                launch.abandoned = True
                actor, launch.actor = launch.actor, None
            if actor is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_kill, ray, actor)
            raise
        handle = RayHandle(self, launch.actor, name=self.actor_name(spec), namespace=self.settings.ray_namespace,
                           url=info["url"], node=info["node"], log_path=spec.log_path)
        handle.owner = spec.owner
        return handle

    def _launch(self, ray: Any, spec: ReplicaSpec, launch: _Launch) -> dict[str, Any]:
        """Create the actor, wait for Ray to place it and for its engine to answer; the actor's info.
        Raises :class:`BackendError` (the caller kills the actor)."""
        name = self.actor_name(spec)
        actor = self._create(ray, spec, name)
        with launch.lock:
            if launch.abandoned:  # the caller gave up while the actor was being made
                _kill(ray, actor)
                raise BackendError("launch abandoned")
            launch.actor = actor
        placed = actor.__ray_ready__.remote()
        started = actor.start.remote(spec, self._engine_settings())
        ready, _ = ray.wait([placed], timeout=spec.start_timeout)
        if not ready:
            raise BackendError(f"no node of the Ray cluster at {self.settings.ray_address} took replica "
                               f"{name} (resources {dict(spec.resources) or {'CPU': 1}}) within {spec.start_timeout:.0f}s")
        try:
            info = ray.get(started, timeout=spec.start_timeout + 30)
        except ray.exceptions.GetTimeoutError:
            raise BackendError(f"replica {name} did not start within {spec.start_timeout:.0f}s") from None
        except ray.exceptions.RayError as exc:
            raise BackendError(f"replica {name} failed on its Ray node: {exc}") from None
        if info.get("error"):
            raise BackendError(f"replica {name} on Ray node {info.get('node') or '?'}: {info['error']}")
        return info

    def _create(self, ray: Any, spec: ReplicaSpec, name: str) -> Any:
        """The detached actor; one left under the same name (a replica nobody adopted, a dead node's
        actor Ray has not yet buried) is killed first: this launch replaces it."""
        actor_class = ray.remote(ReplicaActor).options(
            name=name, namespace=self.settings.ray_namespace, lifetime="detached", max_restarts=0,
            max_task_retries=0, **self._options(spec))
        deadline = time.monotonic() + 15.0
        while True:
            try:
                return actor_class.remote()
            except ValueError:  # the name is taken
                if time.monotonic() > deadline:
                    raise BackendError(f"a Ray actor named {name} is still there and would not go") from None
                with contextlib.suppress(ValueError):
                    _kill(ray, ray.get_actor(name, namespace=self.settings.ray_namespace))
                time.sleep(0.5)

    async def adopt(self, spec: ReplicaSpec, record: dict[str, Any]) -> ReplicaHandle | None:
        name, url = record.get("actor"), record.get("url")
        if not isinstance(name, str) or not isinstance(url, str):
            return None
        namespace = record.get("namespace") or self.settings.ray_namespace
        ray = await self._connected()

        def find() -> tuple[Any, dict[str, Any]] | None:
            try:
                actor = ray.get_actor(name, namespace=namespace)
                info = ray.get(actor.info.remote(), timeout=PING_TIMEOUT + 2)
            except Exception:  # noqa: BLE001 - no such actor, dead, or not answering
                return None
            return (actor, info) if info.get("alive") and info.get("url") == url else None

        found = await anyio.to_thread.run_sync(find)
        if found is None:
            return None
        actor, info = found
        if not await answers_health(url, spec.owner):
            return None
        handle = RayHandle(self, actor, name=name, namespace=namespace, url=url, node=info.get("node"),
                           log_path=spec.log_path)
        handle.owner = spec.owner
        return handle
