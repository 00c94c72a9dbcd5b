"""The supervisor makes the database true: engine replicas for every endpoint that should run.

Any number of server processes may share one database. Each runs one supervisor; one asyncio task
wakes on every change (a PostgreSQL ``NOTIFY`` from any process, a local wake) and every
``supervisor_interval`` seconds, reads the endpoints, and for each one:

* **claims or renews its lease** (``endpoint_leases``; ``MODELYARD_LEASE_SECONDS``). Exactly one
  process owns an endpoint at a time: the lease is taken with a conditional ``UPDATE`` (only when it
  is ours or expired), so two processes never both win it. A process that stops renewing (killed,
  cut off) loses its endpoints to the others when the lease runs out, or at once when the owner was
  a process on this machine that no longer exists;
* **if it owns the endpoint, reconciles it** in its own task, through the endpoint's
  :class:`~modelyard.endpoints.pool.ReplicaPool`:

  - a new owner first *adopts* the replicas the database lists (``endpoint_replicas``: their
    backend's record, their loaded adapters) instead of starting duplicates; a replica that cannot be
    adopted is forgotten;
  - STARTED: keep between ``min_replicas`` and ``max_replicas`` replicas (``remote`` endpoints: one
    per URL), scaling on requests in flight per replica (with ``min_replicas`` 0 the last replica
    stops when idle and the gateway holds the next request until one is up again); each replica is
    launched by its backend (:mod:`modelyard.engine.backends`: ``local``, ``ray``, ``remote``),
    gets the endpoint's enabled attached adapters, and only then is counted and written as a row
    (PENDING → STARTING → STARTED);
  - a replica that dies is replaced after a back-off; after ``engine_max_failures`` failures in a row
    the endpoint goes to ERROR with the reason in ``error``. While a dead replica is being replaced
    the endpoint reports ``degraded``; with none left alive it goes back to STARTING. A backend that
    is unavailable (a Ray cluster that does not answer) keeps the endpoint in PENDING with the reason,
    without counting failures;
  - STOPPED: stop the replicas gracefully (STOPPING → STOPPED); an endpoint with ``inactive_timeout``
    (minutes) that served no request for that long, in any process, is set to STOPPED;
  - each replica's loaded adapters follow the database (attached and enabled);

* **if another process owns it, follows it**: the pool routes to the replicas the rows list (so every
  process's gateway serves every endpoint), and this process reports its own traffic on the lease
  row (for ``inactive_timeout`` and for waking an endpoint scaled to zero).

Built-in engines are started with an orphan timeout of two lease periods: a replica whose owner died
keeps serving until a new owner adopts it, and stops itself if nobody does.

A database outage does not stop the loop: a pass that fails is logged and the next one comes after a
back-off (doubling up to ``supervisor_max_backoff`` seconds); running replicas keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, utcnow
from modelyard.endpoints.pool import AdapterWant, NoReplica, Replica, ReplicaPool
from modelyard.engine.backends import (
    REMOTE,
    BackendError,
    Backends,
    BackendUnavailable,
    ReplicaHandle,
    ReplicaSpec,
    backend_name,
)
from modelyard.engine.client import EngineClient
from modelyard.errors import ServiceError
from modelyard.observability.metrics import ServerMetrics
from modelyard.providers import service as providers
from modelyard.storage import FilesetMissing

log = logging.getLogger("modelyard.supervisor")
CHANNEL = "modelyard_serving"
"""PostgreSQL ``NOTIFY`` channel: any change that can alter routing or what should run."""

__all__ = ["AdapterWant", "NoReplica", "Replica", "ReplicaPool", "Supervisor", "adapter_wants"]


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
class ReplicaRow:
    id: str
    url: str
    serial: int
    backend: str
    record: dict[str, Any]
    owner: str
    adapters: dict[str, str]


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
    placement: str | None = None
    urls: tuple[str, ...] = ()
    resources: tuple[tuple[str, float], ...] = ()
    replicas: tuple[ReplicaRow, ...] = ()
    owner: str | None = None
    """The lease holder as read (before this pass's claim)."""
    lease_expires: Any = None
    """When the lease as read runs out (naive UTC, as stored), None without a lease row."""
    remote_request_at: float | None = None
    """The latest request another process served (wall-clock seconds), from the lease row."""
    error: str | None = None


@dataclass
class _Restarts:
    """The supervisor's own bookkeeping for one endpoint (not runtime state of the endpoint)."""

    failures: int = 0
    retry_at: float = 0.0
    last_failure: float = 0.0
    busy_since: float = field(default_factory=time.monotonic)
    serial: int = 0
    recorded: tuple[Any, ...] = ()
    task: asyncio.Task[None] | None = None
    reported_request: float = 0.0


class _FollowedHandle(ReplicaHandle):
    """A replica another process owns: reachable by URL, alive while its row is listed."""

    backend = "followed"

    def __init__(self, url: str, served_name: str | None = None) -> None:
        self.url = url
        self.served_name = served_name

    def alive(self) -> bool:
        return True

    async def stop(self) -> None:
        return None

    def record(self) -> dict[str, Any]:
        return {"url": self.url}


class Supervisor:
    def __init__(self, db: Database, settings: Settings, metrics: ServerMetrics | None = None) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics or ServerMetrics(enabled=False)
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This process, as lease and replica rows name it."""
        self.backends = Backends(settings)
        self.pools: dict[str, ReplicaPool] = {}
        self._restarts: dict[str, _Restarts] = {}
        self.owned: set[str] = set()
        """Endpoints whose lease this process holds (as of its last pass)."""
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._listener: _Listener | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._seen_until: Any = None
        self.generation = 0
        """Bumped on every change that can alter routing; the gateway's name cache keys on it."""

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        if self.db.engine.dialect.name == "postgresql":
            self._listener = _Listener(self.db, self._notified)
            self._listener.start()
        self._loop_task = asyncio.create_task(self._run(), name="modelyard-supervisor")

    async def stop(self) -> None:
        """Give up this process's leases. When another server process is alive, its replicas are handed
        over running (the others adopt them at once: no gap in service during a rolling restart);
        otherwise they are stopped (the endpoints' desired states stay as they are: the next start runs
        them again)."""
        self._stopping = True
        if self._listener is not None:
            self._listener.stop()
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        others = False
        with contextlib.suppress(Exception):  # the database is unreachable: stop them (as before)
            others = await anyio.to_thread.run_sync(self._others_alive)
        for endpoint_id, pool in list(self.pools.items()):
            restarts = self._restarts.get(endpoint_id)
            if restarts and restarts.task:
                restarts.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await restarts.task
            if others:
                await pool.hand_over()
            else:
                await pool.stop_all()
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(self._give_up_leases, others)
            if others:
                log.info("replicas handed over to the other server processes", extra={"owner": self.owner})
                await anyio.to_thread.run_sync(self._announce)
        await self.backends.close()

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

    def changed(self) -> None:
        """Something that can alter routing or what should run was written: wake this process and
        tell the others (PostgreSQL ``NOTIFY``; the others' passes find it anyway on SQLite)."""
        self.wake()
        if self.db.engine.dialect.name == "postgresql" and self._event_loop is not None:
            with contextlib.suppress(RuntimeError):
                self._event_loop.call_soon_threadsafe(self._announce_soon)

    def _announce_soon(self) -> None:
        task = asyncio.ensure_future(anyio.to_thread.run_sync(self._announce))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _announce(self) -> None:
        try:
            with self.db.session(write=True) as session:
                session.execute(text("SELECT pg_notify(:channel, :owner)"), {"channel": CHANNEL, "owner": self.owner})
        except Exception:  # the others' passes find the change anyway
            log.warning("could not notify the other server processes", exc_info=True)

    def _notified(self, payload: str) -> None:
        if payload != self.owner:
            self.wake()

    def pool(self, endpoint_id: str) -> ReplicaPool:
        """The endpoint's pool in this process (made on first use)."""
        pool = self.pools.get(endpoint_id)
        if pool is None:
            pool = self.pools[endpoint_id] = ReplicaPool(endpoint_id, metrics=self.metrics, wake=self.wake,
                                                         spill=max(self.settings.replica_target_in_flight, 1))
            pool.affinity = self.settings.routing == "adapter_affinity"
        return pool

    def _restart(self, endpoint_id: str) -> _Restarts:
        return self._restarts.setdefault(endpoint_id, _Restarts())

    def _others_alive(self) -> bool:
        """Whether another server process renewed its presence lately (and, on this machine, still runs)."""
        with self.db.session() as session:
            owners = session.scalars(select(tables.ServerProcess.owner).where(
                tables.ServerProcess.owner != self.owner, tables.ServerProcess.seen_until > utcnow()))
            return any(not _vanished_here(owner) for owner in owners)

    def _give_up_leases(self, keep_replicas: bool = False) -> None:
        """After a clean stop: this process's endpoints are free to take at once, and its replicas either
        left for the others to adopt (``keep_replicas``) or, stopped, forgotten."""
        with self.db.session(write=True) as session:
            if not keep_replicas:
                session.execute(delete(tables.EndpointReplica).where(tables.EndpointReplica.owner == self.owner))
            session.execute(delete(tables.EndpointLease).where(tables.EndpointLease.owner == self.owner))
            session.execute(delete(tables.ServerProcess).where(tables.ServerProcess.owner == self.owner))

    async def refresh(self, pool: ReplicaPool) -> None:
        """Bring a followed endpoint's replicas up to date from the database now (before an attach or
        detach in a process that does not own it, so it reaches every replica). Call under its lock."""
        if pool.endpoint_id in self.owned:
            return
        views = await anyio.to_thread.run_sync(self._read_endpoints, pool.endpoint_id)
        if views and views[0].owner != self.owner:
            await self._follow(pool, views[0])

    # ----- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        failed_passes = 0
        while not self._stopping:
            try:
                await self._pass()
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

    async def _pass(self) -> None:
        views = await anyio.to_thread.run_sync(self._read_endpoints)
        activity = self._activity()
        owned = await anyio.to_thread.run_sync(self._claim, views, activity)
        for endpoint_id, at in activity.items():
            self._restart(endpoint_id).reported_request = at
        if any(self.pools[endpoint_id].waiting for endpoint_id in activity):
            self.changed()  # a request held for an endpoint scaled to zero: its owner should start a replica
        gained, lost = owned - self.owned, self.owned - owned
        if gained or lost:
            self.generation += 1
            log.info("endpoint leases", extra={"owner": self.owner, "gained": sorted(gained), "lost": sorted(lost)})
        self.owned = owned
        if self._heartbeat is None or self._heartbeat.done():  # apart from reconciles, which may be long
            pools = [self.pools[e] for e in owned if e in self.pools]
            self._heartbeat = asyncio.create_task(_heartbeat(pools))
        seen = set()
        for view in views:
            seen.add(view.id)
            pool = self.pool(view.id)
            restarts = self._restart(view.id)
            if view.id in lost:
                pool.release_all()
            if view.id in owned:
                if restarts.task is None or restarts.task.done():
                    restarts.task = asyncio.create_task(self._reconcile_safely(pool, view.id, view.id in gained))
            elif restarts.task is None or restarts.task.done():
                await self._follow(pool, view)
        for endpoint_id in list(self.pools):
            if endpoint_id not in seen:  # deleted
                await self.forget(endpoint_id)

    def _activity(self) -> dict[str, float]:
        """When this process last served (or is holding) a request for each endpoint it does not own, if
        that is news since it last said so (wall time)."""
        out: dict[str, float] = {}
        now_wall, now = time.time(), time.monotonic()
        for endpoint_id, pool in self.pools.items():
            if endpoint_id in self.owned or not (pool.served or pool.waiting):
                continue
            at = now_wall - (now - pool.last_request) if pool.waiting == 0 else now_wall
            if at > self._restart(endpoint_id).reported_request + 1.0:
                out[endpoint_id] = at
        return out

    def _claim(self, views: list[EndpointView], activity: dict[str, float]) -> set[str]:
        """Renew this process's leases, take expired ones (and those of vanished processes on this
        machine), and report traffic: one short transaction. Returns the endpoints owned now."""
        now = utcnow()
        until = now + timedelta(seconds=self.settings.lease_seconds)
        ids = [v.id for v in views]
        vanished = {v.owner for v in views if v.owner and v.owner != self.owner and _vanished_here(v.owner)}
        fresh = now + timedelta(seconds=self.settings.lease_seconds * 2 / 3)
        present = self._seen_until is not None and self._seen_until > fresh
        if present and not activity and not vanished and all(
            v.lease_expires is not None and (v.lease_expires > fresh if v.owner == self.owner else v.lease_expires > now)
            for v in views
        ):  # nothing to take, renew or report: no write this pass
            return {v.id for v in views if v.owner == self.owner}
        with self.db.session(write=True) as session:
            if not present:  # this process is alive (for others stopping cleanly: hand over, not stop)
                row = session.get(tables.ServerProcess, self.owner)
                if row is None:
                    session.add(tables.ServerProcess(owner=self.owner, seen_until=until))
                else:
                    row.seen_until = until
                session.execute(delete(tables.ServerProcess).where(
                    tables.ServerProcess.seen_until < now - timedelta(seconds=10 * self.settings.lease_seconds)))
                self._seen_until = until
            if not ids:
                return set()
            table = tables.EndpointLease
            session.execute(update(table).where(table.endpoint_id.in_(ids), table.owner == self.owner)
                            .values(expires_at=until))
            takeable = (table.expires_at < now) | table.owner.in_(vanished) if vanished else table.expires_at < now
            session.execute(update(table).where(table.endpoint_id.in_(ids), table.owner != self.owner, takeable)
                            .values(owner=self.owner, expires_at=until, epoch=table.epoch + 1))
            for endpoint_id, at in activity.items():
                stamp = _wall(at)
                session.execute(update(table).where(table.endpoint_id == endpoint_id,
                                                    (table.last_request_at.is_(None)) | (table.last_request_at < stamp))
                                .values(last_request_at=stamp))
            present = set(session.scalars(select(table.endpoint_id).where(table.endpoint_id.in_(ids))))
            for endpoint_id in ids:
                if endpoint_id in present:
                    continue
                try:
                    with session.begin_nested():
                        session.add(table(endpoint_id=endpoint_id, owner=self.owner, expires_at=until, epoch=1))
                except IntegrityError:
                    pass  # another process took it first (or the endpoint was just deleted)
            return set(session.scalars(select(table.endpoint_id).where(table.endpoint_id.in_(ids),
                                                                        table.owner == self.owner)))

    async def forget(self, endpoint_id: str) -> None:
        """Stop and drop the replicas of an endpoint that no longer exists."""
        self.generation += 1
        pool = self.pools.pop(endpoint_id, None)
        restarts = self._restarts.pop(endpoint_id, None)
        self.owned.discard(endpoint_id)
        if restarts and restarts.task and restarts.task is not asyncio.current_task():
            restarts.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await restarts.task
        if pool is not None:
            await pool.stop_all()

    def _read_endpoints(self, endpoint_id: str | None = None) -> list[EndpointView]:
        """All endpoints (or one) with their attached, enabled adapters, replicas and lease, in one
        transaction."""
        with self.db.session() as session:
            endpoints_q = select(tables.Endpoint)
            bindings_q = (
                select(tables.EndpointAdapter.endpoint_id, tables.Adapter)
                .join(tables.Adapter, tables.Adapter.id == tables.EndpointAdapter.adapter_id)
            )
            replicas_q = select(tables.EndpointReplica).order_by(tables.EndpointReplica.serial)
            leases_q = select(tables.EndpointLease)
            if endpoint_id is not None:
                endpoints_q = endpoints_q.where(tables.Endpoint.id == endpoint_id)
                bindings_q = bindings_q.where(tables.EndpointAdapter.endpoint_id == endpoint_id)
                replicas_q = replicas_q.where(tables.EndpointReplica.endpoint_id == endpoint_id)
                leases_q = leases_q.where(tables.EndpointLease.endpoint_id == endpoint_id)
            endpoints = list(session.scalars(endpoints_q))
            rows = [(bound_to, adapter) for bound_to, adapter in session.execute(bindings_q).all() if adapter.enabled]
            models = {m.id: m for m in session.scalars(
                select(tables.Model).where(tables.Model.id.in_({e.model_id for e in endpoints}))
            )}
            wants = adapter_wants(session, [adapter for _, adapter in rows])
            replicas: dict[str, list[ReplicaRow]] = {}
            for r in session.scalars(replicas_q):
                replicas.setdefault(r.endpoint_id, []).append(ReplicaRow(
                    r.id, r.url, r.serial, r.backend, dict(r.record or {}), r.owner, dict(r.adapters or {})))
            leases = {lease.endpoint_id: lease for lease in session.scalars(leases_q)}
        wanted: dict[str, list[AdapterWant]] = {}
        for (bound_to, _), want in zip(rows, wants, strict=True):
            wanted.setdefault(bound_to, []).append(want)
        return [
            EndpointView(
                id=e.id, name=e.name, model_fileset=models[e.model_id].fileset if e.model_id in models else None,
                desired_state=e.desired_state, state=e.state, min_replicas=e.min_replicas,
                max_replicas=e.max_replicas, max_loras=e.max_loras, max_lora_rank=e.max_lora_rank, engine=e.engine,
                inactive_timeout=e.inactive_timeout, adapters=tuple(wanted.get(e.id, [])), workspace=e.workspace,
                placement=e.placement, urls=tuple(e.urls or ()), resources=tuple(sorted((e.resources or {}).items())),
                replicas=tuple(replicas.get(e.id, [])),
                owner=leases[e.id].owner if e.id in leases else None,
                lease_expires=leases[e.id].expires_at if e.id in leases else None,
                remote_request_at=(leases[e.id].last_request_at.timestamp() if e.id in leases
                                   and leases[e.id].last_request_at else None),
                error=e.error,
            )
            for e in endpoints
        ]

    def _stop_for_inactivity(self, endpoint_id: str) -> None:
        with self.db.session(write=True) as session:
            row = session.get(tables.Endpoint, endpoint_id)
            if row is not None:
                row.desired_state = "STOPPED"
                row.updated_at = utcnow()

    def _write_state(self, endpoint_id: str, state: str, error: str | None = None, *, keep_error: bool = False) -> None:
        with self.db.session(write=True) as session:
            row = session.get(tables.Endpoint, endpoint_id)
            if row is None:
                return
            row.state = state
            if not keep_error:
                row.error = error
            row.updated_at = utcnow()
            providers.sync_endpoint(session, row)  # the provider that stands for it says the same

    async def _set_state(self, view: EndpointView, state: str, error: str | None = None) -> None:
        await anyio.to_thread.run_sync(lambda: self._write_state(view.id, state, error))
        self.changed()
        if state != view.state:
            log.info("endpoint state", extra={"endpoint": view.name, "state": state, "error": error})

    def _save_replicas(self, endpoint_id: str, replicas: list[Replica]) -> None:
        """Make the endpoint's replica rows those this process owns now."""
        now = utcnow()
        with self.db.session(write=True) as session:
            table = tables.EndpointReplica
            keep = [r.id for r in replicas]
            session.execute(delete(table).where(table.endpoint_id == endpoint_id, table.id.not_in(keep)))
            existing = {row.id: row for row in session.scalars(select(table).where(table.id.in_(keep)))}
            for replica in replicas:
                row = existing.get(replica.id)
                if row is None:
                    session.add(table(id=replica.id, endpoint_id=endpoint_id, serial=replica.serial,
                                      backend=replica.handle.backend, url=replica.url, record=replica.handle.record(),
                                      owner=self.owner, adapters=dict(replica.loaded), created_at=now, updated_at=now))
                else:
                    row.owner, row.adapters, row.updated_at = self.owner, dict(replica.loaded), now

    # ----- following an endpoint another process owns ------------------------------------------------

    async def _follow(self, pool: ReplicaPool, view: EndpointView) -> None:
        pool.workspace, pool.name, pool.max_lora_rank = view.workspace, view.name, view.max_lora_rank
        pool.place(a.name for a in view.adapters)
        before = [(r.id, r.url) for r in pool.replicas]
        served = {r.url: r.record.get("served_name") for r in view.replicas}
        await pool.follow([(r.id, r.url, r.serial, r.adapters) for r in view.replicas],
                          lambda url: _FollowedHandle(url, served.get(url)))
        if [(r.id, r.url) for r in pool.replicas] != before:
            self.generation += 1

    # ----- reconciling one endpoint this process owns ---------------------------------------------------

    async def _reconcile_safely(self, pool: ReplicaPool, endpoint_id: str, gained: bool) -> None:
        try:
            async with pool.lock:
                # read under the lock: an attach or detach that held it is already in the database
                views = await anyio.to_thread.run_sync(self._read_endpoints, endpoint_id)
                if views:
                    if gained:
                        await self._adopt(pool, views[0])
                    await self._reconcile(pool, views[0])
                    await self._record(pool, views[0])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconcile failed", extra={"endpoint": endpoint_id})

    def _spec(self, view: EndpointView, serial: int, model_path: str | None, url: str | None = None) -> ReplicaSpec:
        resources = dict(view.resources)
        return ReplicaSpec(
            endpoint_id=view.id, served_name=view.name, engine=view.engine, serial=serial, model_path=model_path,
            max_loras=view.max_loras, max_lora_rank=view.max_lora_rank,
            log_path=self.settings.home / "logs" / "endpoints" / view.id / f"replica-{serial}.log",
            resources=resources, url=url, start_timeout=self.settings.engine_start_timeout,
            orphan_timeout=2 * self.settings.lease_seconds, owner=self.owner,
        )

    async def _adopt(self, pool: ReplicaPool, view: EndpointView) -> None:
        """Take over the replicas the database lists for an endpoint this process just came to own. The
        followed replicas keep serving until the adopted ones replace them in one step."""
        restarts = self._restart(view.id)
        restarts.serial = max([restarts.serial, *(r.serial for r in view.replicas)])
        adopted: list[Replica] = []
        for row in view.replicas:
            handle = None
            try:
                backend = self.backends.get(row.backend)
                handle = await backend.adopt(self._spec(view, row.serial, None, row.url), row.record)
            except (BackendError, OSError) as exc:
                log.warning("replica not adopted", extra={"endpoint": view.name, "url": row.url, "error": str(exc)})
            if handle is None:
                log.info("replica gone: not adopted", extra={"endpoint": view.name, "url": row.url})
                continue
            adopted.append(Replica(row.id, handle, EngineClient(handle.url), serial=row.serial,
                                   loaded=dict(row.adapters)))
            log.info("replica adopted", extra={"endpoint": view.name, "url": handle.url, "from": row.owner})
        await pool.take_over(adopted)
        self.generation += 1

    async def _record(self, pool: ReplicaPool, view: EndpointView) -> None:
        """Write the replica rows when what this process runs changed."""
        restarts = self._restart(view.id)
        fingerprint = tuple((r.id, r.url, tuple(sorted(r.loaded.items()))) for r in pool.owned)
        listed = tuple((r.id, r.url, tuple(sorted(r.adapters.items()))) for r in view.replicas
                       if r.owner == self.owner)
        if fingerprint == restarts.recorded and fingerprint == listed:
            return
        await anyio.to_thread.run_sync(self._save_replicas, view.id, pool.owned)
        restarts.recorded = fingerprint
        self.changed()

    async def _reconcile(self, pool: ReplicaPool, view: EndpointView) -> None:
        now = time.monotonic()
        restarts = self._restart(view.id)
        pool.workspace, pool.name, pool.max_lora_rank = view.workspace, view.name, view.max_lora_rank
        pool.place(a.name for a in view.adapters)
        await asyncio.gather(*(r.handle.check() for r in pool.owned), return_exceptions=True)
        for replica in await pool.prune_dead():
            self._failed(restarts, now)
            self.generation += 1
            log.warning("replica died", extra={"endpoint": view.name, "url": replica.url, "pid": replica.handle.pid,
                                               "failures": restarts.failures})
        if pool.lost and not pool.replicas and view.state == "STARTED" and view.desired_state == "STARTED":
            # nothing left to serve: not STARTED until a replacement is up (the gateway answers 503
            # with Retry-After meanwhile)
            await self._set_state(view, "STARTING")
            view = dataclasses.replace(view, state="STARTING")
        if view.desired_state == "STOPPED":
            pool.lost = 0
            if pool.replicas:
                await self._set_state(view, "STOPPING")
                await pool.stop_all()
            restarts.failures = 0
            if view.state != "STOPPED":
                await self._set_state(view, "STOPPED")
            return
        if view.state == "ERROR":
            return  # until the user stops and starts it again
        last_request = max(time.time() - (now - pool.last_request), view.remote_request_at or 0.0)
        if (view.inactive_timeout and pool.replicas and pool.in_flight == 0
                and time.time() - last_request > view.inactive_timeout * 60):
            log.info("endpoint inactive: stopping it", extra={"endpoint": view.name,
                                                              "inactive_timeout_min": view.inactive_timeout})
            await anyio.to_thread.run_sync(self._stop_for_inactivity, view.id)
            self.changed()
            return
        if restarts.failures >= self.settings.engine_max_failures:
            await pool.stop_all()
            await anyio.to_thread.run_sync(lambda: self._write_state(view.id, "ERROR", None, keep_error=True))
            self.changed()
            return
        if restarts.failures and pool.replicas and now - restarts.last_failure > 60:
            restarts.failures = 0

        target = self._target(pool, restarts, view, now)
        if len(pool.replicas) < target:
            if now < restarts.retry_at:
                self._wake_at(restarts.retry_at)
                return
            scaling_from_zero = view.min_replicas == 0 and view.state == "STARTED"
            waiting_for_backend = view.state == "PENDING" and view.error is not None  # keep saying why
            if not pool.replicas and view.state != "STARTING" and not scaling_from_zero and not waiting_for_backend:
                await self._set_state(view, "STARTING")
            try:
                replica = await self._spawn(pool, view)
            except BackendUnavailable as exc:
                log.warning("backend unavailable", extra={"endpoint": view.name, "error": str(exc)})
                if not pool.replicas:
                    await self._set_state(view, "PENDING", f"waiting for the engine backend: {exc}")
                self._wake_at(now + min(self.settings.supervisor_max_backoff, 5.0))
                return
            except (BackendError, FilesetMissing, OSError) as exc:
                self._failed(restarts, now)
                log.warning("replica failed to start", extra={"endpoint": view.name, "error": str(exc)})
                if restarts.failures >= self.settings.engine_max_failures:
                    await self._set_state(view, "ERROR", f"engine failed to start: {exc}")
                else:
                    self._wake_at(restarts.retry_at)
                return
            pool.add(replica)
            self.generation += 1
            if len(pool.replicas) < target:
                self.wake()
        else:
            pool.lost = 0  # as many replicas as wanted: nothing is being replaced
        if len(pool.replicas) > target and (idle := pool.retire_idle()) is not None:
            self.generation += 1
            await idle.client.aclose()
            await idle.handle.stop()
        wanted = {a.name: a for a in view.adapters}
        for replica in pool.owned:
            await pool.sync_adapters(replica, wanted, self.local_copy)
        # target 0: scaled to zero, still STARTED (starts on demand)
        if (pool.replicas or target == 0) and (view.state != "STARTED" or view.error):
            await self._set_state(view, "STARTED")

    def _failed(self, restarts: _Restarts, now: float) -> None:
        restarts.failures += 1
        restarts.last_failure = now
        restarts.retry_at = now + min(2.0 ** (restarts.failures - 1), 30.0)

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(when - time.monotonic(), 0.0), self._wake.set)

    def _target(self, pool: ReplicaPool, restarts: _Restarts, view: EndpointView, now: float) -> int:
        """Replicas wanted now: one per URL for ``remote`` engines; otherwise enough for the requests
        in flight (and those waiting for an endpoint scaled to zero, in any process), within min..max,
        scaling in only after a quiet spell."""
        if view.engine == REMOTE:
            return len(view.urls)
        low = max(view.min_replicas, 0)
        high = max(view.max_replicas, low, 1)
        current = len(pool.replicas)
        demand = pool.in_flight + pool.waiting
        if view.remote_request_at and time.time() - view.remote_request_at < 2 * self.settings.supervisor_interval + 1:
            demand = max(demand, 1)  # another process is serving it, or holding a request for it
        want = math.ceil(demand / max(self.settings.replica_target_in_flight, 1))
        if demand:
            restarts.busy_since = now
        if want < current and now - restarts.busy_since < self.settings.scale_down_after:
            want = current  # scale in only after a quiet spell
        return min(max(want, low), high)

    async def _spawn(self, pool: ReplicaPool, view: EndpointView) -> Replica:
        restarts = self._restart(view.id)
        backend = self.backends.get(backend_name(view.engine, view.placement, self.settings))
        url = None
        model_path = None
        if view.engine == REMOTE:
            taken = {r.url for r in pool.replicas}
            url = next((u for u in view.urls if u.rstrip("/") not in taken), None)
            if url is None:
                raise BackendError("every URL of the endpoint has a replica")
        else:
            if not view.model_fileset:
                raise FilesetMissing(f"endpoint '{view.name}': its model has no fileset with checkpoint files")
            model_path = str(await anyio.to_thread.run_sync(self._model_folder, view.model_fileset))
            if not Path(model_path, "config.json").is_file():
                raise FilesetMissing(f"fileset '{view.model_fileset}' has no config.json (looked in {model_path})")
        restarts.serial += 1
        spec = self._spec(view, restarts.serial, model_path, url)
        log.info("starting replica", extra={"endpoint": view.name, "engine": view.engine, "backend": backend.name})
        handle = await backend.launch(spec)
        replica = Replica(f"replica-{uuid.uuid4()}", handle, EngineClient(handle.url), serial=spec.serial)
        try:
            await pool.sync_adapters(replica, {a.name: a for a in view.adapters}, self.local_copy)
        except BaseException:
            await replica.client.aclose()
            await handle.stop()
            raise
        log.info("replica ready", extra={"endpoint": view.name, "pid": handle.pid, "url": handle.url,
                                         "node": handle.node})
        return replica

    def stats(self) -> list[dict[str, Any]]:
        """What each endpoint runs, as this server sees it (read by ``/health`` and ``/metrics``; no I/O)."""
        return [pool.stats() for pool in list(self.pools.values())]

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


async def _heartbeat(pools: list[ReplicaPool]) -> None:
    await asyncio.gather(*(pool.heartbeat() for pool in pools), return_exceptions=True)


def _vanished_here(owner: str) -> bool:
    """True when ``owner`` names a process on this machine that no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _wall(seconds: float) -> datetime:
    """Wall-clock seconds as the naive UTC datetime the tables store."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


class _Listener:
    """Wakes the supervisor on every ``NOTIFY`` on :data:`CHANNEL` (PostgreSQL only): a thread with
    one connection of its own, reconnecting with a back-off when it drops."""

    def __init__(self, db: Database, on_notice: Any) -> None:
        self.db = db
        self.on_notice = on_notice
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelyard-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self.on_notice(notice.payload)
            except Exception:  # noqa: BLE001 - any failure of this connection: reconnect after a pause
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)
