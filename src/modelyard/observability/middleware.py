"""Every request's id, access log line and HTTP metrics, in one plain ASGI middleware (no per-request
task, no body copy).

The id is the client's ``X-Request-ID`` when it sends a sane one (up to 128 visible ASCII
characters), else a new one; it is answered in ``X-Request-ID``, sent on to the engine by the
gateway, and added to every log line written while the request is handled (a context variable
read by :class:`RequestIdFilter`). A gateway request's line also names the endpoint, the model,
the replica, the tokens and the time to first token (what the gateway left in ``state["gateway"]``).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.observability.metrics import ServerMetrics

log = logging.getLogger("modelyard")

HEADER = b"x-request-id"
_SANE = re.compile(rb"^[\x21-\x7e]{1,128}$")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


_PREFIX = uuid.uuid4().hex[:16]
_serial = itertools.count()


def _reseed() -> None:
    global _PREFIX
    _PREFIX = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_reseed)  # a forked worker gets its own half


def new_request_id() -> str:
    """32 hex digits, unique without a random read per request: this process's random half, then a
    counter (a uuid4 per request cost a getrandom system call)."""
    return f"{_PREFIX}{next(_serial) & 0xFFFFFFFFFFFFFFFF:016x}"


def current_request_id() -> str | None:
    return request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to each record logged while a request is handled (JSON logs show it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


def _route(scope: Scope) -> str:
    """The matched route's template (bounded, unlike the path); unmatched paths share one label."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class Observe:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = sent.decode() if sent is not None and _SANE.match(sent) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        token = request_id.set(rid)
        status = 500
        raw = rid.encode()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"]
            route = _route(scope)
            if route != "/metrics":
                self.metrics.http(route, method, status, elapsed)
            if log.isEnabledFor(logging.INFO):  # the access log line (MODELYARD_LOG_LEVEL=INFO, the default)
                extra: dict[str, Any] = {"request_id": rid, "method": method, "path": scope["path"],
                                         "status": status, "duration_ms": round(elapsed * 1000, 2)}
                gateway = state.get("gateway")
                if gateway is not None:
                    extra.update(gateway.summary() if hasattr(gateway, "summary") else gateway)
                log.info("request", extra=extra)
            request_id.reset(token)
