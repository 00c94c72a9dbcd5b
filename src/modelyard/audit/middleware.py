"""``AuditTrail``: one audit event for every request that can change something.

A pure ASGI middleware placed outside authentication, so refused requests are recorded too. It reads
only the request line and headers, the response status, and a small JSON answer of a successful request
(for the created entity's name or id): never a request body. The event is written after the last body
message has gone out, in a worker thread and its own short transaction; a failed write is logged and
never reaches the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.audit import service
from modelyard.auth.principal import Access
from modelyard.db.engine import Database, utcnow

log = logging.getLogger("modelyard.audit")

WRITERS = 4
"""Audit writes in flight at once per event loop: they wait on their own limiter, never holding the
threads requests need (a request may hold the SQLite write lock while it waits for a thread)."""
_limiter: RunVar[anyio.CapacityLimiter] = RunVar("modelyard_audit_writers")


def _writers() -> anyio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(WRITERS)
        _limiter.set(limiter)
        return limiter


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1") or None
    return None


def _is_json(headers: Any) -> bool:
    for key, value in headers or ():
        if key.lower() == b"content-type":
            kind = value.decode("latin-1").split(";")[0].strip().lower()
            return kind == "application/json" or kind.endswith("+json")
    return False


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, included routers opened (FastAPI keeps an included router whole, as one route that
    matches for all of its own; routers here are included without a prefix of their own)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _flat(inner)
        else:
            yield route


def _route(scope: Scope) -> tuple[str | None, dict[str, Any]]:
    """The matched route's name and path parameters; when the request was answered before routing
    (refused by authentication, the boundary), the route it would have reached."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "name", None), dict(scope.get("path_params") or {})
    app = scope.get("app")
    for candidate in _flat(getattr(getattr(app, "router", None), "routes", ())):
        match, child = candidate.matches(scope)
        if match == Match.FULL:
            return getattr(candidate, "name", None), dict(child.get("path_params") or {})
    return None, {}


class AuditTrail:
    def __init__(self, app: ASGIApp, *, inference: bool = False) -> None:
        self.app = app
        self.inference = inference
        """Record inference calls too (chat, completions, messages, embeddings)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not service.audited(scope["method"], scope["path"], inference=self.inference):
            await self.app(scope, receive, send)
            return
        at = utcnow()
        scope.setdefault("state", {})  # one dict shared with the middlewares inside: access lands here
        status = 500
        reading = False
        chunks: list[bytes] = []
        size = 0

        async def watch(message: Message) -> None:
            nonlocal status, reading, size
            if message["type"] == "http.response.start":
                status = message["status"]
                reading = 200 <= status < 300 and _is_json(message.get("headers"))
            elif message["type"] == "http.response.body" and reading:
                body = message.get("body", b"")
                size += len(body)
                if size > service.BODY_LIMIT:
                    reading = False
                    chunks.clear()
                else:
                    chunks.append(body)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            await self._record(scope, at, status, None)
            raise
        await self._record(scope, at, status, b"".join(chunks) if reading else None)

    async def _record(self, scope: Scope, at: Any, status: int, answer: bytes | None) -> None:
        try:
            db: Database | None = getattr(getattr(scope.get("app"), "state", None), "db", None)
            if db is None:
                return
            row = self._event(scope, at, status, answer)
            await anyio.to_thread.run_sync(service.record, db, row, limiter=_writers())
        except Exception as exc:  # noqa: BLE001 - the audit trail never fails a request
            log.warning("audit event not recorded", extra={"method": scope.get("method"), "path": scope.get("path"),
                                                           "status": status, "error": str(exc).splitlines()[0][:200]
                                                           if str(exc) else type(exc).__name__})

    @staticmethod
    def _event(scope: Scope, at: Any, status: int, answer: bytes | None) -> Any:
        access = (scope.get("state") or {}).get("access")
        if not isinstance(access, Access):
            access = None
        method, path = scope["method"], scope["path"]
        route_name, params = _route(scope)
        workspace = service.workspace_of(path, _header(scope, b"x-modelyard-workspace"), access)
        parsed = None
        if answer:
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
        return service.event(
            at=at, principal=service.principal_of(access), action=service.action_of(route_name, method, path),
            method=method, path=path, workspace=workspace, target=service.target_of(params, parsed), status=status,
            outcome=service.outcome_of(status, access, workspace), request_id=_header(scope, b"x-request-id"),
        )
