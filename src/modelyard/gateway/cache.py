"""The gateway's name caches: a short time-to-live, one database read per key at a time.

Every request names a model; reading the database for it each time would put a transaction (and a
worker thread) on the hot path. A :class:`TtlCache` keeps each answer for ``ttl`` seconds, so a change
made by another server process is seen within that time (changes made in this one clear the caches
at once). When an entry expires while many requests want it, only the first reads the database; the
others wait for that read instead of each starting their own (with 32 requests in flight, an expiry
used to cost 32 reads). An exception from the read (a name that is not there) is remembered like a
value and raised again, with a fresh traceback, to each caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, V | BaseException]] = {}
        self._loading: dict[Hashable, asyncio.Future[V | BaseException]] = {}

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]], *,
                  remember: type[BaseException] | tuple[type[BaseException], ...] = ()) -> V:
        """The value for ``key``, from ``load()`` when missing or expired. Exceptions of the ``remember``
        types are cached like values; any other propagates and is not cached."""
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > time.monotonic():
                return self._unwrap(entry[1])
            pending = self._loading.get(key)
            if pending is None:
                return await self._load(key, load, remember)
            try:
                return self._unwrap(await asyncio.shield(pending))
            except asyncio.CancelledError:
                if pending.cancelled():  # the read was cancelled (its request went away), not this caller
                    continue
                raise

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[V]],
                    remember: type[BaseException] | tuple[type[BaseException], ...]) -> V:
        pending = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            try:
                value: V | BaseException = await load()
            except remember as exc:  # type: ignore[misc]
                value = exc
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._loading[key]
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, value)
        pending.set_result(value)
        return self._unwrap(value)

    @staticmethod
    def _unwrap(value: V | BaseException) -> V:
        if isinstance(value, BaseException):
            raise value.with_traceback(None)
        return value


def of(state: Any, name: str, ttl: float) -> TtlCache[Any]:
    """The app's cache called ``name`` (``app.state.<name>``), made on first use."""
    cache = getattr(state, name, None)
    if cache is None:
        cache = TtlCache(ttl)
        setattr(state, name, cache)
    return cache
