"""The per-request session, as a FastAPI dependency.

``scope="function"`` makes the commit happen before the response is sent, so a client that
got a 201 can read what it wrote on the next request. Anything but GET/HEAD takes the write
lock up front on SQLite (see :mod:`modelyard.db.engine`).

``max_concurrency`` bounds the sessions open at once below the worker-thread pool (40 threads in
anyio). Without it, under load every worker thread can end up blocked waiting for the SQLite write
lock or a pooled connection while the request that holds it waits for a free thread to run its
endpoint or its commit: a deadlock that only breaks when the 30 s timeouts fire. Requests over
the bound wait without holding a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from modelyard.db.engine import MAX_SESSIONS, Database


def get_session(request: Request) -> Iterator[Session]:
    db: Database = request.app.state.db
    with db.session(write=request.method not in ("GET", "HEAD")) as session:
        yield session


T = TypeVar("T")


async def in_db(db: Database, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run ``fn`` in one short transaction on a worker thread: for async routes that must not hold a
    transaction (or the SQLite write lock) open while they wait on an engine or a request body.
    A read (``write=False``) must have no side effects: it is run again if the connection was lost."""

    def work() -> T:
        if not write:
            return db.read(fn)  # a read is tried once more if the connection was lost under it
        with db.session(write=True) as session:
            return fn(session)

    return await anyio.to_thread.run_sync(work)


SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_SESSIONS)]
