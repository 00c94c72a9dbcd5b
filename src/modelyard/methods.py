"""HTTP methods as HTTP defines them, for every route at once.

- ``HEAD`` works wherever ``GET`` does (RFC 9110 §9.3.2): the request runs as ``GET`` and the body
  is dropped, headers (``Content-Length`` included) kept. Routes that define ``HEAD`` themselves
  (file downloads) keep their own.
- A 405 names every method the path accepts in ``Allow``. Starlette answers with the methods of
  the first route whose path matched, so ``/models`` (GET and POST on two routes) said only one.

Both look at the routing table only for a ``HEAD`` request or a 405 answer: other requests pass
through untouched.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HttpMethods:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    def _accepts(self, scope: Scope, method: str) -> bool:
        probe = {**scope, "method": method}
        return any(route.matches(probe)[0] == Match.FULL for route in self.routes)

    def allowed(self, scope: Scope) -> set[str]:
        """Every method some route accepts for this path (``HEAD`` wherever ``GET`` is). Asked of the
        routes themselves (``BaseRoute.matches``), so included routers answer for their own routes."""
        methods = {m for m in _METHODS if self._accepts(scope, m)}
        if "GET" in methods:
            methods.add("HEAD")
        return methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head_as_get = False
        if scope["method"] == "HEAD" and not self._accepts(scope, "HEAD") and self._accepts(scope, "GET"):
            scope = {**scope, "method": "GET"}
            head_as_get = True

        async def reply(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = ", ".join(sorted(self.allowed(scope)))
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow.encode())]}
            elif message["type"] == "http.response.body" and head_as_get:
                if message.get("more_body", False):
                    return  # the body of a HEAD answer is never sent
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, receive, reply)
