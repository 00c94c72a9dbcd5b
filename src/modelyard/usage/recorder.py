"""Usage records, aggregated in memory on the hot path and flushed to the database every few seconds.

:meth:`UsageRecorder.record` is called by the gateway on the event loop once per finished request. It
adds the request to an in-memory aggregate keyed by ``(workspace, model, endpoint_id, minute)``:
counters and a fixed latency histogram (:mod:`modelyard.usage.histogram`). No I/O, no lock: a dict
lookup and a few additions (about a microsecond).

A flush writes every aggregate that changed since the last successful flush, in one transaction on a
worker thread. Each aggregate owns one row of ``usage_minutes``, told apart from other processes' rows
(and from this process's older aggregates of the same minute) by its ``writer`` column, and the flush
writes the aggregate's *absolute* totals (``INSERT … ON CONFLICT DO UPDATE SET col = excluded.col``):

- several server processes on one database never write the same row, and reads add the rows up;
- a flush that fails (the database is down) changes nothing in memory: the next one writes the totals
  again, so nothing is lost and nothing is counted twice, even when a commit succeeded but its answer
  was lost.

Aggregates of minutes at least two minutes old are dropped from memory once written. :meth:`stop`
flushes one last time, so a clean stop loses nothing (unless the database is down then: the loss is
logged with the number of requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelyard.db.engine import Database, unavailable
from modelyard.db.tables import USAGE_LATENCY_COLUMNS, usage_minutes
from modelyard.usage.histogram import BUCKETS, bucket_of

log = logging.getLogger("modelyard.usage")

OTHER_MODEL = "(other)"
"""The model name requests are counted under once :attr:`UsageRecorder.max_keys` aggregates are held."""
_KEY_COLUMNS = ("workspace", "model", "endpoint_id", "minute", "writer")
_LIMITS = {"workspace": 63, "model": 255, "endpoint_id": 64}


class _Aggregate:
    """One (workspace, model, endpoint, minute) of this process. ``version`` goes up on every change and
    ``written`` is the version the database holds: only the flush (under its lock) sets ``written``, only
    ``record`` bumps ``version``, so neither can undo the other from another thread."""

    __slots__ = ("completion_tokens", "errors", "hist", "prompt_tokens", "requests", "version", "writer",
                 "written")

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.requests = self.errors = self.prompt_tokens = self.completion_tokens = 0
        self.hist = [0] * BUCKETS
        self.version = self.written = 0


@dataclass(frozen=True)
class _Snapshot:
    key: tuple[str, str, str | None, int]
    aggregate: _Aggregate
    version: int
    row: dict[str, Any]


def _text(value: str | None, limit: int) -> str:
    """A key part as the column stores it: no NUL (PostgreSQL refuses it), at most ``limit`` characters."""
    text = (value or "").replace("\x00", "")
    return text[:limit]


class UsageRecorder:
    """Requests, errors, tokens and latency per (workspace, model, endpoint, minute); see the module."""

    def __init__(self, db: Database, flush_interval: float = 5.0, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        """Unix seconds now (tests move it)."""
        self.flush_interval = flush_interval
        self.max_keys = max_keys
        """Aggregates held at once; above it new keys are counted under model :data:`OTHER_MODEL` (a
        bound on memory and rows should callers ever pass unbounded model names)."""
        self.writer_id = uuid.uuid4().hex[:20]
        self._serial = itertools.count(1)
        self._aggregates: dict[tuple[str, str, str | None, int], _Aggregate] = {}
        self._flush_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- the hot path ---------------------------------------------------------------------------------

    def record(self, *, workspace: str, model: str, endpoint_id: str | None, ok: bool, prompt_tokens: int,
               completion_tokens: int, latency_s: float) -> None:
        """Count one finished request (on the event loop; no I/O). Latency is counted for successful
        requests only; tokens for every request."""
        key = (workspace, model, endpoint_id, int(self.clock() // 60))
        aggregate = self._aggregates.get(key)
        if aggregate is None:
            if len(self._aggregates) >= self.max_keys:
                key = (workspace, OTHER_MODEL, None, key[3])
                aggregate = self._aggregates.get(key)
            if aggregate is None:
                aggregate = self._aggregates[key] = _Aggregate(f"{self.writer_id}.{next(self._serial)}")
        aggregate.requests += 1
        if ok:
            aggregate.hist[bucket_of(latency_s)] += 1
        else:
            aggregate.errors += 1
        aggregate.prompt_tokens += prompt_tokens or 0
        aggregate.completion_tokens += completion_tokens or 0
        aggregate.version += 1  # last: a flush that read the old version writes this aggregate again

    # -- flushing -------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Requests counted in memory but not yet written (for logs and tests)."""
        return sum(a.requests for a in list(self._aggregates.values()) if a.version != a.written)

    def _snapshot(self) -> list[_Snapshot]:
        """The aggregates changed since they were last written, with their totals as rows. Safe while
        ``record`` runs on another thread: the version is read before the counters, and ``record``
        bumps it after them, so a torn read is always written again by the next flush."""
        taken = []
        for key, aggregate in list(self._aggregates.items()):
            version = aggregate.version
            if version == aggregate.written:
                continue
            workspace, model, endpoint_id, minute = key
            row: dict[str, Any] = {
                "workspace": _text(workspace, _LIMITS["workspace"]), "model": _text(model, _LIMITS["model"]),
                "endpoint_id": _text(endpoint_id, _LIMITS["endpoint_id"]), "minute": minute,
                "writer": aggregate.writer, "requests": aggregate.requests, "errors": aggregate.errors,
                "prompt_tokens": aggregate.prompt_tokens, "completion_tokens": aggregate.completion_tokens,
            }
            row.update(zip(USAGE_LATENCY_COLUMNS, (c or None for c in list(aggregate.hist)), strict=True))
            taken.append(_Snapshot(key, aggregate, version, row))
        return taken

    def _upsert(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        dialect = postgresql if self.db.backend == "postgresql" else sqlite
        stmt = dialect.insert(usage_minutes)
        columns = [c.name for c in usage_minutes.columns if c.name not in _KEY_COLUMNS]
        stmt = stmt.on_conflict_do_update(index_elements=list(_KEY_COLUMNS),
                                          set_={name: stmt.excluded[name] for name in columns})
        session.execute(stmt, list(rows))

    def _write(self, snapshots: list[_Snapshot]) -> list[_Snapshot]:
        """Write the rows in one transaction; on an error that is not an outage (a bug, a value the
        database refuses), write them one by one and drop (and log) only those refused. Returns the
        snapshots now stored. An outage raises: everything stays in memory for the next flush."""
        try:
            with self.db.session(write=True) as session:
                self._upsert(session, [s.row for s in snapshots])
            return snapshots
        except sa_exc.SQLAlchemyError as exc:
            if unavailable(exc):
                raise
            log.exception("usage flush refused; writing its rows one by one")
        stored = []
        for snapshot in snapshots:
            try:
                with self.db.session(write=True) as session:
                    self._upsert(session, [snapshot.row])
            except sa_exc.SQLAlchemyError as exc:
                if unavailable(exc):
                    raise
                log.error("usage row dropped: the database refuses it", extra={
                    "workspace": snapshot.row["workspace"], "model": snapshot.row["model"][:100],
                    "requests": snapshot.row["requests"], "error": str(exc).splitlines()[0][:200]})
            stored.append(snapshot)  # written or dropped: either way it is no longer pending
        return stored

    def flush(self) -> int:
        """Write what changed since the last flush (blocking: call it from a worker thread, or use
        :meth:`flush_async`). Returns the number of rows written; raises when the database cannot be
        reached, keeping everything in memory for the next flush."""
        with self._flush_lock:
            snapshots = self._snapshot()
            stored = self._write(snapshots) if snapshots else []
            for snapshot in stored:
                snapshot.aggregate.written = snapshot.version  # clean unless record bumped it meanwhile
            self._evict(int(self.clock() // 60) - 1)
            return len(stored)

    def _evict(self, before_minute: int) -> None:
        """Drop clean aggregates of minutes before ``before_minute`` (one minute of grace: ``record``
        never touches them again, even one that read the clock just before the minute turned)."""
        for key, aggregate in list(self._aggregates.items()):
            if key[3] < before_minute and aggregate.version == aggregate.written:
                self._aggregates.pop(key, None)

    async def flush_async(self) -> int:
        """:meth:`flush` on a worker thread."""
        return await anyio.to_thread.run_sync(self.flush)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Flush every ``flush_interval`` seconds in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush_async()
            except Exception as exc:  # noqa: BLE001 - kept in memory, retried at the next pass
                log.warning("usage flush failed; kept in memory for the next one",
                            extra={"pending_requests": self.pending(), "error": str(exc).splitlines()[0][:200]})

    async def stop(self) -> None:
        """Stop the background flushes and flush one last time."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():  # a test client may stop on another loop
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self.flush_async()
        except Exception as exc:  # noqa: BLE001 - stopping anyway; say what is lost
            log.error("usage records lost at stop: the database could not be written",
                      extra={"pending_requests": self.pending(), "error": str(exc).splitlines()[0][:200]})
