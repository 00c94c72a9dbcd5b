"""The supervisor makes the database true: engine replicas for every endpoint that should run.

One asyncio task per server wakes on every change (and every ``supervisor_interval`` seconds),
reads the endpoints and their attached adapters, and reconciles each endpoint in its own task:

* STARTED: keep between ``min_replicas`` and ``max_replicas`` replicas, scaling on requests in
  flight per replica (with ``min_replicas`` 0 the last replica stops when idle and the gateway holds
  the next request until one is up again); start each on a free port, wait for ``/health``, load the
  endpoint's enabled attached adapters, and only then count it (PENDING → STARTING → STARTED);
* a replica that dies is replaced after a back-off; after ``engine_max_failures`` failures in a row
  the endpoint goes to ERROR with the reason in ``error``. While a dead replica is being replaced the
  endpoint reports ``degraded``; if no replica is left alive it goes back to STARTING (never STARTED
  with nothing to serve: Together's SDK knows only its six states, so there is no DEGRADED state);
* STOPPED: stop the replicas gracefully (STOPPING → STOPPED); an endpoint with ``inactive_timeout``
  (minutes) that served no request for that long is set to STOPPED, as Together does;
* each replica's loaded adapters follow the database (attached and enabled), so a restart, a
  disabled adapter or a detach all converge the same way.

A database outage does not stop the loop: a pass that fails is logged and the next one comes after a
back-off (doubling up to ``supervisor_max_backoff`` seconds); running replicas keep serving meanwhile.

The engines' pids are written to the endpoint row, so a server that was killed stops its orphans
when it starts again; the database, not the processes, is the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, utcnow
from modelyard.engine.client import AdapterError, EngineClient, EngineError
from modelyard.engine.process import EngineProcess, EngineStartError, builtin_command, free_port
from modelyard.engine.vllm import vllm_command, vllm_env, vllm_python
from modelyard.errors import ServiceError
from modelyard.observability.metrics import ServerMetrics
from modelyard.storage import FilesetMissing

log = logging.getLogger("modelyard.supervisor")


@dataclass
class Replica:
    process: EngineProcess
    client: EngineClient
    loaded: dict[str, str] = field(default_factory=dict)  # adapter name -> the fileset version loaded
    in_flight: int = 0


@dataclass(frozen=True)
class AdapterWant:
    name: str
    workspace: str
    fileset: str
    version: str = ""  # changes when the fileset is re-pointed or its files are uploaded again


def adapter_wants(session: Session, adapters: list[tables.Adapter]) -> list[AdapterWant]:
    """What to load for these adapters, versioned by their fileset's last change."""
    refs = {a.fileset for a in adapters}
    stamps: dict[str, str] = {}
    if refs:
        for row in session.scalars(select(tables.Fileset).where(
            tables.Fileset.workspace.in_({r.split("/", 1)[0] for r in refs}),
            tables.Fileset.name.in_({r.split("/", 1)[1] for r in refs}),
        )):
            stamps[f"{row.workspace}/{row.name}"] = row.updated_at.isoformat()
    return [AdapterWant(a.name, a.workspace, a.fileset, f"{a.fileset}@{stamps.get(a.fileset, '')}") for a in adapters]


@dataclass(frozen=True)
class EndpointView:
    """What the database says about one endpoint, read in one short transaction."""

    id: str
    name: str
    model_fileset: str | None
    desired_state: str
    state: str
    min_replicas: int
    max_replicas: int
    max_loras: int
    max_lora_rank: int
    engine: str
    inactive_timeout: int | None
    adapters: tuple[AdapterWant, ...]
    workspace: str = ""


@dataclass
class Runtime:
    endpoint_id: str
    replicas: list[Replica] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    retry_at: float = 0.0
    last_failure: float = 0.0
    busy_since: float = field(default_factory=time.monotonic)
    last_request: float = field(default_factory=time.monotonic)
    waiting: int = 0  # requests held by the gateway until a replica of an endpoint scaled to zero is up
    recorded_pids: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    serial: int = 0
    lost: int = 0  # replicas that died and are not replaced yet
    workspace: str = ""  # the endpoint's, as last read (for metrics labels)
    name: str = ""

    @property
    def live(self) -> int:
        return sum(1 for r in self.replicas if r.process.alive())

    @property
    def degraded(self) -> bool:
        """A replica died and is not replaced yet (noticed by the supervisor or not)."""
        return self.lost > 0 or self.live < len(self.replicas)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def pick(self) -> Replica | None:
        """The live replica with the fewest requests in flight."""
        live = [r for r in self.replicas if r.process.alive()]
        return min(live, key=lambda r: r.in_flight) if live else None


class Supervisor:
    def __init__(self, db: Database, settings: Settings, metrics: ServerMetrics | None = None) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics or ServerMetrics(enabled=False)
        self.runtimes: dict[str, Runtime] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.generation = 0
        """Bumped on every change that can alter routing; the gateway's name cache keys on it."""

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        await anyio.to_thread.run_sync(self._recover)
        self._loop_task = asyncio.create_task(self._run(), name="modelyard-supervisor")

    async def stop(self) -> None:
        """Stop every replica (the endpoints' desired states stay as they are for the next start)."""
        self._stopping = True
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for runtime in list(self.runtimes.values()):
            if runtime.task:
                runtime.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runtime.task
            await self._stop_replicas(runtime)

    def wake(self) -> None:
        """Ask for a pass soon; safe to call from any thread."""
        self.generation += 1
        loop = self._event_loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    def runtime(self, endpoint_id: str) -> Runtime:
        return self.runtimes.setdefault(endpoint_id, Runtime(endpoint_id))

    def _recover(self) -> None:
        """After a restart: stop engines a killed server left behind and mark what must start again."""
        with self.db.session(write=True) as session:
            for row in session.scalars(select(tables.Endpoint)):
                for pid in row.processes or []:
                    _kill_orphan(pid)
                row.processes = []
                if row.desired_state == "STARTED" and row.state != "ERROR":
                    row.state = "PENDING"
                elif row.desired_state == "STOPPED":
                    row.state = "STOPPED"
                row.updated_at = utcnow()

    # ----- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        failed_passes = 0
        while not self._stopping:
            try:
                views = await anyio.to_thread.run_sync(self._read_endpoints)
                seen = set()
                for view in views:
                    seen.add(view.id)
                    runtime = self.runtime(view.id)
                    if runtime.task is None or runtime.task.done():
                        runtime.task = asyncio.create_task(self._reconcile_safely(runtime, view.id))
                for endpoint_id in list(self.runtimes):
                    if endpoint_id not in seen:  # deleted
                        await self.forget(endpoint_id)
                failed_passes = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failed_passes += 1
                delay = min(self.settings.supervisor_interval * 2.0 ** failed_passes, self.settings.supervisor_max_backoff)
                log.exception("supervisor pass failed; next one after a back-off",
                              extra={"failed_passes": failed_passes, "backoff_s": delay})
                await asyncio.sleep(delay)  # wakes are ignored: every request may ask for one
                self._wake.clear()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.supervisor_interval)
            self._wake.clear()

    async def forget(self, endpoint_id: str) -> None:
        """Stop and drop the replicas of an endpoint that no longer exists."""
        self.generation += 1
        runtime = self.runtimes.pop(endpoint_id, None)
        if runtime is None:
            return
        if runtime.task and runtime.task is not asyncio.current_task():
            runtime.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runtime.task
        await self._stop_replicas(runtime)

    def _read_endpoints(self, endpoint_id: str | None = None) -> list[EndpointView]:
        """All endpoints (or one) with their attached, enabled adapters, in one transaction."""
        with self.db.session() as session:
            endpoints_q = select(tables.Endpoint)
            bindings_q = (
                select(tables.EndpointAdapter.endpoint_id, tables.Adapter)
                .join(tables.Adapter, tables.Adapter.id == tables.EndpointAdapter.adapter_id)
            )
            if endpoint_id is not None:
                endpoints_q = endpoints_q.where(tables.Endpoint.id == endpoint_id)
                bindings_q = bindings_q.where(tables.EndpointAdapter.endpoint_id == endpoint_id)
            endpoints = list(session.scalars(endpoints_q))
            rows = [(bound_to, adapter) for bound_to, adapter in session.execute(bindings_q).all() if adapter.enabled]
            models = {m.id: m for m in session.scalars(
                select(tables.Model).where(tables.Model.id.in_({e.model_id for e in endpoints}))
            )}
            wants = adapter_wants(session, [adapter for _, adapter in rows])
        wanted: dict[str, list[AdapterWant]] = {}
        for (bound_to, _), want in zip(rows, wants, strict=True):
            wanted.setdefault(bound_to, []).append(want)
        return [
            EndpointView(
                id=e.id, name=e.name, model_fileset=models[e.model_id].fileset if e.model_id in models else None,
                desired_state=e.desired_state, state=e.state, min_replicas=e.min_replicas,
                max_replicas=e.max_replicas, max_loras=e.max_loras, max_lora_rank=e.max_lora_rank, engine=e.engine,
                inactive_timeout=e.inactive_timeout, adapters=tuple(wanted.get(e.id, [])), workspace=e.workspace,
            )
            for e in endpoints
        ]

    def _stop_for_inactivity(self, endpoint_id: str) -> None:
        with self.db.session(write=True) as session:
            row = session.get(tables.Endpoint, endpoint_id)
            if row is not None:
                row.desired_state = "STOPPED"
                row.updated_at = utcnow()

    def _write_state(self, endpoint_id: str, state: str, error: str | None = None, pids: list[int] | None = None,
                     *, keep_error: bool = False) -> None:
        with self.db.session(write=True) as session:
            row = session.get(tables.Endpoint, endpoint_id)
            if row is None:
                return
            row.state = state
            if not keep_error:
                row.error = error
            if pids is not None:
                row.processes = pids
            row.updated_at = utcnow()

    async def _set_state(self, runtime: Runtime, view: EndpointView, state: str, error: str | None = None) -> None:
        self.generation += 1
        pids = [r.process.pid for r in runtime.replicas if r.process.pid is not None]
        await anyio.to_thread.run_sync(lambda: self._write_state(view.id, state, error, pids))
        if state != view.state:
            log.info("endpoint state", extra={"endpoint": view.name, "state": state, "error": error})

    # ----- reconciling one endpoint ----------------------------------------------------------------

    async def _reconcile_safely(self, runtime: Runtime, endpoint_id: str) -> None:
        try:
            async with runtime.lock:
                # read under the lock: an attach or detach that held it is already in the database
                views = await anyio.to_thread.run_sync(self._read_endpoints, endpoint_id)
                if views:
                    await self._reconcile(runtime, views[0])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconcile failed", extra={"endpoint": endpoint_id})

    async def _reconcile(self, runtime: Runtime, view: EndpointView) -> None:
        now = time.monotonic()
        runtime.workspace, runtime.name = view.workspace, view.name
        for replica in list(runtime.replicas):
            if not replica.process.alive():
                runtime.replicas.remove(replica)
                runtime.lost += 1
                await replica.client.aclose()
                self._failed(runtime, now)
                log.warning("replica died", extra={"endpoint": view.name, "pid": replica.process.pid,
                                                   "failures": runtime.failures})
        if runtime.lost and not runtime.replicas and view.state == "STARTED" and view.desired_state == "STARTED":
            # nothing left to serve: not STARTED until a replacement is up (the gateway answers 503
            # with Retry-After meanwhile)
            await self._set_state(runtime, view, "STARTING")
            view = dataclasses.replace(view, state="STARTING")
        if view.desired_state == "STOPPED":
            runtime.lost = 0
            if runtime.replicas:
                await self._set_state(runtime, view, "STOPPING")
                await self._stop_replicas(runtime)
            runtime.failures = 0
            if view.state != "STOPPED":
                await self._set_state(runtime, view, "STOPPED")
            return
        if view.state == "ERROR":
            return  # until the user stops and starts it again
        if (view.inactive_timeout and runtime.replicas and runtime.in_flight == 0
                and now - runtime.last_request > view.inactive_timeout * 60):
            log.info("endpoint inactive: stopping it", extra={"endpoint": view.name,
                                                              "inactive_timeout_min": view.inactive_timeout})
            await anyio.to_thread.run_sync(self._stop_for_inactivity, view.id)
            self.wake()
            return
        if runtime.failures >= self.settings.engine_max_failures:
            await self._stop_replicas(runtime)
            await anyio.to_thread.run_sync(
                lambda: self._write_state(view.id, "ERROR", None, [], keep_error=True)
            )
            return
        if runtime.failures and runtime.replicas and now - runtime.last_failure > 60:
            runtime.failures = 0

        target = self._target(runtime, view, now)
        if len(runtime.replicas) < target:
            if now < runtime.retry_at:
                self._wake_at(runtime.retry_at)
                return
            scaling_from_zero = view.min_replicas == 0 and view.state == "STARTED"
            if not runtime.replicas and view.state != "STARTING" and not scaling_from_zero:
                await self._set_state(runtime, view, "STARTING")
            try:
                replica = await self._spawn(runtime, view)
            except (EngineStartError, FilesetMissing, OSError) as exc:
                self._failed(runtime, now)
                log.warning("replica failed to start", extra={"endpoint": view.name, "error": str(exc)})
                if runtime.failures >= self.settings.engine_max_failures:
                    await self._set_state(runtime, view, "ERROR", f"engine failed to start: {exc}")
                else:
                    self._wake_at(runtime.retry_at)
                return
            runtime.replicas.append(replica)
            runtime.lost = max(runtime.lost - 1, 0)
            if len(runtime.replicas) < target:
                self.wake()
        else:
            runtime.lost = 0  # as many replicas as wanted: nothing is being replaced
        if len(runtime.replicas) > target:
            idle = min(runtime.replicas, key=lambda r: r.in_flight)
            if idle.in_flight == 0:
                runtime.replicas.remove(idle)
                await self._stop_replica(idle)
        for replica in runtime.replicas:
            await self._sync_adapters(replica, view)
        if runtime.replicas or target == 0:  # target 0: scaled to zero, still STARTED (starts on demand)
            pids = [r.process.pid for r in runtime.replicas if r.process.pid is not None]
            if view.state != "STARTED":
                await self._set_state(runtime, view, "STARTED")
                runtime.recorded_pids = pids
            elif pids != runtime.recorded_pids:
                await anyio.to_thread.run_sync(lambda: self._write_state(view.id, "STARTED", None, pids))
                runtime.recorded_pids = pids

    def _failed(self, runtime: Runtime, now: float) -> None:
        runtime.failures += 1
        runtime.last_failure = now
        runtime.retry_at = now + min(2.0 ** (runtime.failures - 1), 30.0)

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(when - time.monotonic(), 0.0), self._wake.set)

    def _target(self, runtime: Runtime, view: EndpointView, now: float) -> int:
        """Replicas wanted now: enough for the requests in flight (and those waiting for an endpoint
        scaled to zero), within min..max, scaling in only after a quiet spell."""
        low = max(view.min_replicas, 0)
        high = max(view.max_replicas, low, 1)
        current = len(runtime.replicas)
        demand = runtime.in_flight + runtime.waiting
        want = math.ceil(demand / max(self.settings.replica_target_in_flight, 1))
        if demand:
            runtime.busy_since = now
        if want < current and now - runtime.busy_since < self.settings.scale_down_after:
            want = current  # scale in only after a quiet spell
        return min(max(want, low), high)

    async def _spawn(self, runtime: Runtime, view: EndpointView) -> Replica:
        if not view.model_fileset:
            raise FilesetMissing(f"endpoint '{view.name}': its model has no fileset with checkpoint files")
        model_path = str(await anyio.to_thread.run_sync(self._model_folder, view.model_fileset))
        if not Path(model_path, "config.json").is_file():
            raise FilesetMissing(f"fileset '{view.model_fileset}' has no config.json (looked in {model_path})")
        port = free_port()
        runtime.serial += 1
        log_path = self.settings.home / "logs" / "endpoints" / view.id / f"replica-{runtime.serial}.log"
        if view.engine == "vllm":
            argv = vllm_command(model_path, served_name=view.name, host="127.0.0.1", port=port,
                                max_loras=view.max_loras, max_lora_rank=view.max_lora_rank,
                                python=self.settings.vllm_python or vllm_python())
            env = vllm_env()
        else:
            argv = builtin_command(model_path, served_name=view.name, host="127.0.0.1", port=port,
                                   max_loras=view.max_loras, max_lora_rank=view.max_lora_rank)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=log_path, env=env)
        log.info("starting replica", extra={"endpoint": view.name, "engine": view.engine, "port": port})
        process.start()  # a fork and exec (milliseconds), on the loop: no cancellation can lose the child
        replica = Replica(process=process, client=EngineClient(process.url))
        try:
            await anyio.to_thread.run_sync(process.wait_healthy, self.settings.engine_start_timeout)
            await self._sync_adapters(replica, view)
        except asyncio.CancelledError:
            # the start was abandoned (the server is stopping): leave no engine behind, even
            # though nothing can be awaited any more
            process.stop(grace=2.0)
            raise
        except BaseException:
            await self._stop_replica(replica)
            raise
        log.info("replica ready", extra={"endpoint": view.name, "pid": process.pid, "url": process.url})
        return replica

    async def _sync_adapters(self, replica: Replica, view: EndpointView) -> None:
        """Load what the database attaches and enables; unload the rest; swap in new weights (in place,
        without a gap in service) for an adapter whose fileset changed."""
        wanted = {a.name: a for a in view.adapters}
        for name in sorted(set(replica.loaded) - set(wanted)):
            await self.unload(replica, name, view.name, view.workspace)
        for name, want in wanted.items():
            if replica.loaded.get(name) == want.version:
                continue
            try:
                await self.load(replica, want, view.max_lora_rank, view.name)
            except (AdapterError, EngineError, FilesetMissing, OSError) as exc:
                log.warning("adapter not loaded", extra={"endpoint": view.name, "adapter": name, "error": str(exc)})

    async def load(self, replica: Replica, want: AdapterWant, max_rank: int, endpoint: str = "") -> None:
        started = time.perf_counter()
        ok = False
        try:
            path = await anyio.to_thread.run_sync(self.local_copy, want)
            inplace = want.name in replica.loaded
            try:
                await replica.client.load_adapter(want.name, str(path), max_rank=max_rank, inplace=inplace)
            except EngineError as exc:
                if "already been loaded" not in exc.message:
                    raise
            ok = True
        finally:
            self.metrics.adapter_loaded(want.workspace, endpoint, ok, time.perf_counter() - started)
        if inplace:
            log.info("adapter reloaded", extra={"adapter": want.name, "version": want.version})
        replica.loaded[want.name] = want.version

    async def unload(self, replica: Replica, name: str, endpoint: str = "", workspace: str = "") -> None:
        """Unload ``name`` from one replica; an engine that no longer has it is fine."""
        with contextlib.suppress(EngineError):
            await replica.client.unload_adapter(name)
        replica.loaded.pop(name, None)
        self.metrics.adapter_unloaded(workspace, endpoint)

    def stats(self) -> list[dict[str, Any]]:
        """What each endpoint runs in this server now (read by ``/health`` and ``/metrics``; no I/O)."""
        out = []
        for runtime in list(self.runtimes.values()):
            live = runtime.live
            out.append({"endpoint_id": runtime.endpoint_id, "workspace": runtime.workspace, "endpoint": runtime.name,
                        "in_flight": runtime.in_flight, "queued": runtime.waiting,
                        "replicas": {"ready": live, "lost": runtime.lost + len(runtime.replicas) - live}})
        return out

    def local_copy(self, want: AdapterWant) -> Path:
        """The adapter's files in a local cache folder of their own (atomic; once per content)."""
        return self._folder(want.fileset, f"{want.workspace}--{want.name}", copy=True)

    def _model_folder(self, reference: str) -> Path:
        return self._folder(reference, reference.replace("/", "--"), copy=False)

    def _folder(self, reference: str, label: str, *, copy: bool) -> Path:
        from modelyard.filesets.service import local_folder  # the filesets domain knows where files live

        try:
            with self.db.session() as session:
                return local_folder(session, self.settings, reference, label=label, copy=copy)
        except ServiceError as exc:
            raise FilesetMissing(exc.message) from None

    async def _stop_replica(self, replica: Replica) -> None:
        await replica.client.aclose()
        await anyio.to_thread.run_sync(replica.process.stop)

    async def _stop_replicas(self, runtime: Runtime) -> None:
        replicas, runtime.replicas = runtime.replicas, []
        await asyncio.gather(*(self._stop_replica(r) for r in replicas), return_exceptions=True)


def _kill_orphan(pid: int) -> None:
    """Stop an engine process group left by a server that died, if that pid is still one of ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return
    if b"modelyard.engine" not in cmdline and b"vllm" not in cmdline:
        return  # the pid was reused by something else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    log.info("stopped an engine left by an earlier server", extra={"pid": pid})


__all__ = ["Replica", "Runtime", "Supervisor"]
