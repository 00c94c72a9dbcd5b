"""Every request passes here before any route: the ``Host`` check (DNS rebinding), the failed-login
rate limit, authentication (:class:`~modelyard.auth.authority.Authority`) and the route table's
scope and role requirement (:mod:`modelyard.auth.policy`). What passes reaches the app with
``request.state.access`` (the caller's :class:`~modelyard.auth.principal.Access`) and
``request.state.workspace`` (the workspace ``/v1`` routes act in: ``X-Modelyard-Workspace``, else the
key's default workspace, else ``default``).

A pure ASGI middleware: refusals are answered here in the route family's error shape, and nothing of
the request body is read before the caller is known.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.auth.authority import Authority
from modelyard.auth.errors import AuthError
from modelyard.auth.policy import is_public, requirement
from modelyard.errors import ServiceError
from modelyard.gateway.anthropic import anthropic_error

log = logging.getLogger("modelyard.auth")

WORKSPACE_HEADER = b"x-modelyard-workspace"


class FailureLimiter:
    """At most ``per_minute`` failed authentications per client address in any minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        times = self._failures.get(client)
        if not times:
            return None
        now = time.monotonic()
        while times and now - times[0] > 60:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return int(60 - (now - times[0])) + 1 if len(times) >= self.per_minute else None

    def failed(self, client: str) -> None:
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())


@functools.lru_cache(maxsize=1024)
def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)  # an address is never a rebinding: only names can be re-pointed
        return True
    except ValueError:
        return False


class Refusal(NamedTuple):
    """What :meth:`Authenticate.admit` refuses a request with."""

    status: int
    message: str
    code: str
    headers: dict[str, str] | None = None


class Authenticate:
    def __init__(self, app: ASGIApp, *, authority: Callable[[], Authority], allowed_hosts: list[str],
                 failures_per_minute: int, openai_surface: Callable[[str], bool],
                 trusted_workspaces: list[str] | None = None, open_paths: frozenset[str] = frozenset(),
                 limiter: FailureLimiter | None = None) -> None:
        self.app = app
        self.open_paths = open_paths  # answered without a key by this deployment's choice (``/metrics``)
        self.authority = authority
        hostname = socket.gethostname().lower()
        self.allowed_hosts = frozenset({h.lower() for h in allowed_hosts} | {hostname, socket.getfqdn().lower()})
        self.limiter = limiter or FailureLimiter(failures_per_minute)  # shared with the gateway's hot path
        self.openai_surface = openai_surface
        self.trusted = frozenset(trusted_workspaces or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self.admit(scope)
        if refusal is not None:
            await self.refuse(scope, send, refusal)
            return
        await self.app(scope, receive, send)

    async def admit(self, scope: Scope) -> Refusal | None:
        """Check an HTTP request (see the module docstring): ``None`` when it may go on, with
        ``state["access"]`` and ``state["workspace"]`` set; else what to answer (:meth:`refuse`)."""
        path: str = scope["path"]
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not _host_allowed(host, self.allowed_hosts):
            return Refusal(400, f"Host '{host[:100]}' is not served here; add it to MODELYARD_ALLOWED_HOSTS if "
                           "this server should answer to that name", "bad_host")
        if is_public(path) or path in self.open_paths:
            return None
        authority = self.authority()
        client = (scope.get("client") or ("unknown", 0))[0]
        if authority.enabled:
            wait = self.limiter.retry_after(client)
            if wait is not None:
                return Refusal(429, f"too many failed authentications from this address; retry in {wait} s",
                               "rate_limited", {"Retry-After": str(wait)})
        token = _token(headers)
        try:
            access = (await anyio.to_thread.run_sync(authority.authenticate, token)
                      if authority.enabled and not authority.inline and not authority.from_memory(token)
                      else authority.authenticate(token))
        except AuthError as exc:
            if token is not None:  # a guess; a request with no key at all (a browser's favicon) guesses nothing
                self.limiter.failed(client)
            return Refusal(401, f"Unauthorized: {exc.reason}", "unauthorized",
                           {"WWW-Authenticate": 'Bearer realm="modelyard", error="invalid_token"'})
        except SQLAlchemyError:
            return Refusal(503, "the database is not reachable right now; retry shortly", "database_unavailable",
                           {"Retry-After": "5"})
        header_ws = headers.get(WORKSPACE_HEADER)
        workspace = (header_ws.decode("latin-1") if header_ws else None) or access.principal.default_workspace \
            or "default"
        state = scope.setdefault("state", {})  # set before the checks: the audit trail names who was refused
        state["access"] = access
        state["workspace"] = workspace
        need = requirement(scope["method"], path, workspace, self.trusted)
        try:
            if need.group is not None:
                access.require_scope(need.group, need.write)
            if need.role is not None and need.workspace is not None:
                access.require(need.workspace, need.role, need.action)
        except ServiceError as exc:
            return Refusal(exc.status_code, exc.message, exc.code)
        return None

    async def refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        await self._reject(scope, send, refusal.status, refusal.message, refusal.code, refusal.headers)

    async def _reject(self, scope: Scope, send: Send, status: int, message: str, code: str,
                      headers: dict[str, str] | None = None) -> None:
        if scope["path"] == "/v1/messages":  # Anthropic's SDK reads Anthropic's error shape
            body = anthropic_error(status, message)
        elif self.openai_surface(scope["path"]):
            kind = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                    429: "rate_limit_error", 503: "service_unavailable"}.get(status, "invalid_request_error")
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        else:
            body = {"detail": message}
        data = json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})


def _token(headers: dict[bytes, bytes]) -> str | None:
    """The bearer token of ``Authorization``, or ``X-Api-Key`` (what Anthropic's SDK sends)."""
    value = headers.get(b"authorization")
    if value:
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None
