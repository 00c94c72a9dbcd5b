"""One endpoint's runtime state, owned by one object: its :class:`ReplicaPool`.

The pool alone changes the endpoint's replicas, the adapters loaded in them, the requests in flight
and its lock. Everyone else asks it:

* the gateway takes a replica with ``async with pool.lease(adapter=...)`` (counted in flight while
  held; held back while an endpoint scaled to zero starts a replica) and may ``switch`` to another
  live replica when the first one did not answer at all;
* attach and detach call :meth:`ReplicaPool.attach` / :meth:`ReplicaPool.detach` (load on every live
  replica, undone everywhere if one fails);
* the supervisor adds and retires replicas (:meth:`add`, :meth:`prune_dead`, :meth:`retire_idle`,
  :meth:`stop_all`, :meth:`follow`) and keeps their adapters in step with the database
  (:meth:`sync_adapters`);
* ``/health``, ``/metrics``, the endpoint view and the console read :meth:`stats`.

Replicas this process started or adopted are *owned*; the others (:meth:`follow`) are replicas of an
endpoint another server process owns, known from the database: this process routes to them and loads
adapters into them on attach, but never starts or stops them.

Routing knows where adapters live: a request for adapter X goes to X's home among the live replicas
(rendezvous hashing with bounded loads, :func:`homes`: adapters spread evenly over replicas, the same
in every process, and mostly stay put when one comes or goes), unless that replica is busier than
the least loaded one by ``spill`` requests; then to the least loaded. With more attached adapters than
an engine keeps resident (``max_loras``), this keeps each replica's working set small instead of every
replica cycling through every adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from modelyard.engine.backends import ReplicaHandle
from modelyard.engine.client import AdapterError, EngineClient, EngineError
from modelyard.observability.metrics import ServerMetrics
from modelyard.storage import FilesetMissing

log = logging.getLogger("modelyard.pool")


@dataclass(frozen=True)
class AdapterWant:
    name: str
    workspace: str
    fileset: str
    version: str = ""  # changes when the fileset is re-pointed or its files are uploaded again


@dataclass(eq=False)
class Replica:
    """One replica as this process sees it. Its fields are the pool's to change."""

    id: str
    handle: ReplicaHandle
    client: EngineClient
    serial: int = 0
    owned: bool = True
    loaded: dict[str, str] = field(default_factory=dict)  # adapter name -> the fileset version loaded
    in_flight: int = 0

    @property
    def url(self) -> str:
        return self.client.base_url

    def alive(self) -> bool:
        return self.handle.alive()


class NoReplica(Exception):
    """No live replica could take the request (the pool's caller turns this into a 503)."""


class Lease:
    """A replica taken for one request: counted in flight from ``__aenter__`` until released.

    ``async with pool.lease(...) as lease:`` releases at the end of the block unless :meth:`keep` was
    called, which hands the release to whoever relays a stream (they call :meth:`release`)."""

    def __init__(self, pool: ReplicaPool, adapter: str | None, wait: float) -> None:
        self.pool = pool
        self.adapter = adapter
        self.wait = wait
        self.replica: Replica | None = None
        self.tried: list[Replica] = []
        self._kept = False

    async def __aenter__(self) -> Self:
        replica = self.pool.pick(self.adapter)
        if replica is None and self.wait > 0:
            replica = await self.pool._wait_for_replica(self.adapter, self.wait)
        if replica is None:
            raise NoReplica(self.pool.endpoint_id)
        self._take(replica)
        return self

    def _take(self, replica: Replica) -> None:
        replica.in_flight += 1
        self.replica = replica
        self.pool.last_request = time.monotonic()
        self.pool.served += 1

    def switch(self) -> Replica | None:
        """Give the replica back (it did not answer) and take another live one not tried yet."""
        assert self.replica is not None
        self.tried.append(self.replica)
        self.replica.in_flight -= 1
        self.replica = None
        others = [r for r in self.pool.replicas if r not in self.tried and r.alive()]
        if not others:
            return None
        self._take(min(others, key=lambda r: r.in_flight))
        return self.replica

    def keep(self) -> None:
        self._kept = True

    def release(self) -> None:
        if self.replica is not None:
            self.replica.in_flight -= 1
            self.replica = None

    async def __aexit__(self, *exc: object) -> None:
        if not self._kept:
            self.release()


Loader = Callable[[AdapterWant], Path]
"""Where an adapter's files are on this machine (copied from its fileset once per content)."""


class ReplicaPool:
    """The replicas of one endpoint in this server process (see the module docstring)."""

    def __init__(self, endpoint_id: str, *, metrics: ServerMetrics | None = None,
                 wake: Callable[[], None] = lambda: None, spill: int = 4) -> None:
        self.endpoint_id = endpoint_id
        self.metrics = metrics or ServerMetrics(enabled=False)
        self._wake = wake
        self.spill = spill
        self.replicas: list[Replica] = []
        self.lock = asyncio.Lock()
        """Held while replicas or their adapters change (attach, detach, a reconcile pass)."""
        self.waiting = 0
        self.served = 0
        """Requests this process has sent to the endpoint's replicas (to report them to the owner)."""
        self.last_request = time.monotonic()
        self.lost = 0  # replicas that died and are not replaced yet
        self.workspace = ""  # the endpoint's, as last read (labels, logs)
        self.name = ""
        self.max_lora_rank = 16
        self.affinity = True
        self._adapters: tuple[str, ...] = ()
        self._homes: tuple[tuple[str, ...], dict[str, str]] = ((), {})

    # ----- reading ---------------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return sum(1 for r in self.replicas if r.alive())

    @property
    def owned(self) -> list[Replica]:
        return [r for r in self.replicas if r.owned]

    @property
    def degraded(self) -> bool:
        """A replica died and is not replaced yet (noticed by the supervisor or not)."""
        owned = self.owned
        return self.lost > 0 or sum(1 for r in owned if r.alive()) < len(owned)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def stats(self) -> dict[str, Any]:
        """What this process runs for the endpoint now (no I/O): ``replicas`` counts those it owns (so
        the processes' metrics add up), ``followed`` those another process owns that it routes to."""
        owned = self.owned
        live = sum(1 for r in owned if r.alive())
        return {"endpoint_id": self.endpoint_id, "workspace": self.workspace, "endpoint": self.name,
                "in_flight": self.in_flight, "queued": self.waiting,
                "replicas": {"ready": live, "lost": self.lost + len(owned) - live},
                "followed": len(self.replicas) - len(owned),
                "logs": [str(r.handle.log_path) for r in self.replicas if r.alive() and r.handle.log_path]}

    def pick(self, adapter: str | None = None) -> Replica | None:
        """The live replica a request for ``adapter`` should go to (see the module docstring)."""
        live = [r for r in self.replicas if r.alive()]
        if not live:
            return None
        least = min(live, key=lambda r: r.in_flight)
        if adapter is None or len(live) == 1 or not self.affinity:
            return least
        homes = self._homes_for(live)
        home = next((r for r in live if r.id == homes.get(adapter)), None) \
            or max(live, key=lambda r: _weight(adapter, r.id))  # attached since the last pass: its hash
        return home if home.in_flight - least.in_flight < self.spill else least

    def place(self, adapters: Iterable[str]) -> None:
        """The endpoint's attached adapters, to spread over its replicas (see :func:`homes`)."""
        placed = tuple(sorted(set(adapters)))
        if placed != self._adapters:
            self._adapters, self._homes = placed, ((), {})

    def _homes_for(self, live: list[Replica]) -> dict[str, str]:
        ids = tuple(sorted(r.id for r in live))
        if self._homes[0] != ids:
            self._homes = (ids, homes(self._adapters, ids))
        return self._homes[1]

    # ----- the gateway ------------------------------------------------------------------------------

    def lease(self, adapter: str | None = None, *, wait: float = 0.0) -> Lease:
        """Take a replica for one request (``wait`` seconds for one to come up, for an endpoint
        scaled to zero); :class:`NoReplica` when none can take it."""
        return Lease(self, adapter, wait)

    async def _wait_for_replica(self, adapter: str | None, timeout: float) -> Replica | None:
        self.waiting += 1
        self._wake()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                replica = self.pick(adapter)
                if replica is not None:
                    return replica
                await asyncio.sleep(0.1)
            return None
        finally:
            self.waiting -= 1

    # ----- adapters ---------------------------------------------------------------------------------

    async def load(self, replica: Replica, want: AdapterWant, path: Path) -> None:
        """Load (or swap in place, for a new version) one adapter into one replica."""
        started = time.perf_counter()
        ok = False
        inplace = want.name in replica.loaded
        try:
            try:
                await replica.client.load_adapter(want.name, str(path), max_rank=self.max_lora_rank,
                                                  inplace=inplace)
            except EngineError as exc:
                if "already been loaded" not in exc.message:
                    raise
            ok = True
        finally:
            self.metrics.adapter_loaded(want.workspace, self.name, ok, time.perf_counter() - started)
        if inplace:
            log.info("adapter reloaded", extra={"adapter": want.name, "version": want.version})
        replica.loaded[want.name] = want.version

    async def unload(self, replica: Replica, name: str) -> None:
        """Unload ``name`` from one replica; an engine that no longer has it is fine."""
        with contextlib.suppress(EngineError):
            await replica.client.unload_adapter(name)
        replica.loaded.pop(name, None)
        self.metrics.adapter_unloaded(self.workspace, self.name)

    async def attach(self, want: AdapterWant, path: Path, record: Callable[[], Awaitable[None]]) -> None:
        """Load ``want`` into every live replica, then ``record`` the attachment; if a load or the
        record fails, unload it from the replicas it reached and raise. Call under :attr:`lock`."""
        loaded_here: list[Replica] = []
        try:
            for replica in [r for r in self.replicas if r.alive()]:
                if want.name in replica.loaded:
                    continue
                await self.load(replica, want, path)
                loaded_here.append(replica)
            await record()
        except BaseException:
            for replica in loaded_here:
                await self.unload(replica, want.name)
            raise

    async def detach(self, name: str) -> None:
        """Unload ``name`` from every replica. Call under :attr:`lock`, after the attachment is gone."""
        for replica in list(self.replicas):
            await self.unload(replica, name)

    async def sync_adapters(self, replica: Replica, wanted: dict[str, AdapterWant], loader: Loader) -> None:
        """Load what is wanted, unload the rest; swap in new weights (in place, without a gap in
        service) for an adapter whose fileset changed. A failed load is logged and tried again on the
        next pass."""
        for name in sorted(set(replica.loaded) - set(wanted)):
            await self.unload(replica, name)
        for name, want in wanted.items():
            if replica.loaded.get(name) == want.version:
                continue
            try:
                path = await asyncio.to_thread(loader, want)
                await self.load(replica, want, path)
            except (AdapterError, EngineError, FilesetMissing, OSError) as exc:
                log.warning("adapter not loaded", extra={"endpoint": self.name, "adapter": name, "error": str(exc)})

    # ----- replicas (the supervisor's side) ----------------------------------------------------------

    async def heartbeat(self) -> None:
        """Tell every owned replica its owner is alive (engines with an orphan timeout count these)."""
        await asyncio.gather(*(r.handle.ping_as_owner() for r in self.owned if r.alive()), return_exceptions=True)

    def add(self, replica: Replica) -> None:
        self.replicas.append(replica)
        self.lost = max(self.lost - 1, 0)

    async def prune_dead(self) -> list[Replica]:
        """Drop owned replicas that died (each counts as lost until replaced); return them."""
        dead = [r for r in self.owned if not r.alive()]
        for replica in dead:
            self.replicas.remove(replica)
            self.lost += 1
            await replica.client.aclose()
        return dead

    def retire_idle(self) -> Replica | None:
        """Take out the owned replica with nothing in flight, if there is one (to stop it)."""
        owned = self.owned
        idle = min(owned, key=lambda r: r.in_flight) if owned else None
        if idle is None or idle.in_flight:
            return None
        self.replicas.remove(idle)
        return idle

    async def stop_all(self) -> None:
        """Stop every owned replica (forget the others)."""
        replicas, self.replicas = self.replicas, []
        await asyncio.gather(*(_stop(r) for r in replicas if r.owned), return_exceptions=True)
        for replica in replicas:
            if not replica.owned:
                await replica.client.aclose()

    async def hand_over(self) -> None:
        """Forget every replica without stopping any (another process adopts the owned ones)."""
        replicas, self.replicas = self.replicas, []
        for replica in replicas:
            await replica.client.aclose()

    def release_all(self) -> None:
        """Hand every owned replica over without stopping it (another process owns the endpoint now):
        they stay routable as followed replicas until the new owner's rows say otherwise."""
        for replica in self.replicas:
            replica.owned = False

    async def take_over(self, adopted: list[Replica]) -> None:
        """This process owns the endpoint now: ``adopted`` are the replicas it could adopt. A followed
        replica that was adopted becomes owned in place (requests in flight on it stay counted); one
        that was not is dropped. No await between the two: the gateway never sees an empty pool while
        replicas are being adopted."""
        adopted_by_id = {r.id: r for r in adopted}
        kept: list[Replica] = []
        dropped: list[Replica] = []
        for replica in self.replicas:
            if replica.owned:
                kept.append(replica)
            elif (mine := adopted_by_id.pop(replica.id, None)) is not None and mine.url == replica.url:
                replica.handle, replica.owned, replica.serial = mine.handle, True, mine.serial
                replica.loaded = dict(mine.loaded)
                kept.append(replica)
                dropped.append(mine)  # its client only: the handle lives on in ``replica``
            else:
                dropped.append(replica)
        self.replicas = kept + list(adopted_by_id.values())
        for replica in dropped:
            await replica.client.aclose()

    async def follow(self, rows: list[tuple[str, str, int, dict[str, str]]], make: Callable[[str], ReplicaHandle]) -> None:
        """Make the followed replicas those of ``rows`` (id, url, serial, loaded adapters), keeping the
        in-flight counts of those already known."""
        known = {r.id: r for r in self.replicas if not r.owned}
        kept: list[Replica] = [r for r in self.replicas if r.owned]
        for replica_id, url, serial, adapters in rows:
            replica = known.pop(replica_id, None)
            if replica is None or replica.url != url:
                replica = Replica(replica_id, make(url), EngineClient(url), serial=serial, owned=False)
            replica.loaded = dict(adapters)
            kept.append(replica)
        self.replicas = kept
        for gone in known.values():
            await gone.client.aclose()



def homes(adapters: Iterable[str], replica_ids: Iterable[str]) -> dict[str, str]:
    """Each adapter's home replica: its highest-weight replica (rendezvous hashing) that is not yet
    home to its share, ``ceil(adapters / replicas)``. Every process computes the same answer from the
    same adapters and replicas; a replica coming or going moves few adapters; and no replica is home
    to more adapters than it must be (plain hashing can give one replica most of them, more than an
    engine keeps resident, so it churns while others idle)."""
    ids = list(replica_ids)
    names = sorted(adapters)
    if not ids:
        return {}
    share = math.ceil(len(names) / len(ids))
    load = dict.fromkeys(ids, 0)
    out: dict[str, str] = {}
    for name in names:
        for replica_id in sorted(ids, key=lambda r: _weight(name, r), reverse=True):
            if load[replica_id] < share:
                out[name] = replica_id
                load[replica_id] += 1
                break
    return out


def _weight(adapter: str, replica_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{adapter}\0{replica_id}".encode(), digest_size=8).digest(), "big")


async def _stop(replica: Replica) -> None:
    await replica.client.aclose()
    await replica.handle.stop()
