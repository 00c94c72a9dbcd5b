"""The two hot routes, answered in one step: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

:class:`HotPath` sits just inside the request-id and metrics middleware (``Observe``), in front of
every other. For these two paths it runs the same checks the middlewares behind it would, in the
same order and with the same code (``Authenticate.admit``, ``RequestBoundary.check``), then sends the
request straight to the gateway's proxy: no further middleware layers, no route table scan, no
dependency solver, no endpoint wrappers. Each of those costs little, but together they were about a
third of a proxied request's CPU (``bench/gateway_overhead.py --target provider``). What the other
middlewares do is nothing for these requests: inference calls are not audited (``AuditTrail``), and
POST is their method (``HttpMethods``). The routes stay declared on the FastAPI router for the
OpenAPI and for anything mounted without this middleware; the answers are the same, errors
included: a service error in the app's shape, a database outage as a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.auth.middleware import Authenticate
from modelyard.boundary import GONE, PASS, Rejection, RequestBoundary, replay
from modelyard.db.engine import unavailable
from modelyard.errors import ApiError, ServiceError

log = logging.getLogger("modelyard")
HOT = frozenset({"/v1/chat/completions", "/v1/completions"})
_ROUTE = {path: SimpleNamespace(path=path) for path in HOT}
"""What ``scope["route"]`` names for these (the HTTP metrics label requests by route template)."""
DB_RETRY_AFTER_S = 5
"""``Retry-After`` seconds of a 503 answered while the database is unreachable."""


def error_response(exc: ServiceError) -> JSONResponse:
    """A service error as the app answers it (OpenAI's shape for an :class:`ApiError`)."""
    if isinstance(exc, ApiError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


def database_unavailable_response(openai: bool) -> JSONResponse:
    headers = {"Retry-After": str(DB_RETRY_AFTER_S)}
    message = "the database is not reachable right now; retry shortly"
    if openai:
        body: Any = ApiError(503, message, code="database_unavailable", kind="service_unavailable").body()
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse({"detail": message}, status_code=503, headers=headers)


class HotPath:
    def __init__(self, app: ASGIApp, *, authenticate: Authenticate, boundary: RequestBoundary) -> None:
        self.app = app
        self.authenticate = authenticate
        self.boundary = boundary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in HOT:
            await self.app(scope, receive, send)
            return
        from modelyard.gateway.router import proxy_request  # the router imports this module's helpers

        refusal = await self.authenticate.admit(scope)
        if refusal is not None:
            await self.authenticate.refuse(scope, send, refusal)
            return
        checked = await self.boundary.check(scope, receive)
        if checked is GONE:
            return
        if isinstance(checked, Rejection):
            await self.boundary.reject(scope, send, checked)
            return
        if checked is not PASS:
            receive = replay(checked, receive)  # type: ignore[arg-type]
        scope["route"] = _ROUTE[scope["path"]]
        try:
            response = await proxy_request(Request(scope, receive), scope["path"])
        except ServiceError as exc:
            response = error_response(exc)
        except SQLAlchemyError as exc:
            if not unavailable(exc):
                log.exception("unhandled error", extra={"method": "POST", "path": scope["path"]})
                response = JSONResponse({"detail": "Internal server error"}, status_code=500)
            else:
                log.warning("database unavailable", extra={"method": "POST", "path": scope["path"],
                                                           "error": str(exc).splitlines()[0][:200]})
                response = database_unavailable_response(openai=True)
        except Exception:
            log.exception("unhandled error", extra={"method": "POST", "path": scope["path"]})
            response = JSONResponse({"detail": "Internal server error"}, status_code=500)
        await response(scope, receive, send)
