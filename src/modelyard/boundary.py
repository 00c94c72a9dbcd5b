"""The one validation boundary for untrusted input, in front of every route.

A plain ASGI middleware that checks, before any route or parser sees the request:

* the URL: no NUL or other control characters in the path or the query string, and no NUL in a
  header, and no path segment over :data:`MAX_SEGMENT` characters outside file paths (400) —
  PostgreSQL cannot store NUL, and no name, file path or filter value needs a control character;
* JSON bodies (``application/json``, ``*+json``, or no content type, which FastAPI parses as JSON):
  at most ``MODELYARD_MAX_JSON_BYTES`` (413, from ``Content-Length`` before anything is read, or as
  soon as the body passes the limit), nested at most :data:`MAX_DEPTH` deep, no ``NaN``/``Infinity``
  (not JSON), no NUL in any string or key (422, in FastAPI's ``{"detail": [...]}`` form; on the
  OpenAI/Together routes under ``/v1`` the ``{"error": ...}`` shape with 400, as their SDKs expect).

File bodies (``/apis/files/.../filesets/{name}/-/{path}``) are streams, not JSON: they pass through
untouched and keep their own limit (``MODELYARD_MAX_FILE_SIZE``). A body that passes is handed on
unchanged; one that is not valid JSON is left to FastAPI's own 422.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.errors import ECHO_LIMIT, clip

MAX_DEPTH = 64
MAX_SEGMENT = ECHO_LIMIT
"""Longest segment of a URL path outside file paths (names are at most 63 characters, ids shorter
than this): a longer one is 400, so no error message repeats more than this of it."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILE_ROUTE = re.compile(r"^/apis/files/v2/workspaces/[^/]+/filesets/[^/]+/-/")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

max_replicas_limit: ContextVar[int] = ContextVar("max_replicas_limit", default=8)
"""``MODELYARD_MAX_REPLICAS`` of the app serving the current request (set by :class:`RequestBoundary`
for request-body validators, which cannot see the app's settings)."""


PARSED = "json_body"
"""Where in ``scope["state"]`` a JSON body that passed is left, parsed, for the gateway's hot routes
(they would parse it again otherwise); routes with a declared body model parse their own."""


PASS = object()
""":meth:`RequestBoundary.check`: nothing to check in the body; the request goes on as it came."""
GONE = object()
""":meth:`RequestBoundary.check`: the client disconnected while its body was read."""


class Rejection(NamedTuple):
    """What :meth:`RequestBoundary.check` refuses a request with."""

    status: int
    kind: str
    message: str
    loc: tuple[Any, ...] = ()
    value: Any = None
    use_detail_list: bool = True


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app behind the boundary: the body already read, then the client's own messages."""
    delivered = False

    async def again() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class BodyRejected(Exception):
    def __init__(self, status: int, kind: str, message: str, loc: tuple[Any, ...] = (), value: Any = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.loc, self.value = status, kind, message, loc, value


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise BodyRejected(422, "finite_number", f"{name} is not a valid JSON number; send a finite number")


def parse_json(body: bytes) -> Any:
    """The body as JSON, with the boundary's rules; :class:`BodyRejected` when it breaks one.
    ``ValueError`` for a body that is not JSON at all (FastAPI words that error)."""
    try:
        document = orjson.loads(body)  # strict JSON, fast; what it refuses is parsed the lenient way below
    except orjson.JSONDecodeError:
        try:
            document = json.loads(body, parse_constant=_reject_constant)
        except RecursionError:
            raise BodyRejected(422, "json_depth", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    check_document(document)
    return document


def check_document(document: Any) -> None:
    """Depth and NUL checks over a parsed document, without recursion."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            raise BodyRejected(422, "json_depth", f"JSON nested deeper than {MAX_DEPTH} levels", loc[:8])
        if isinstance(value, str):
            if "\x00" in value:
                raise BodyRejected(422, "string_nul", "Strings cannot contain the NUL character (\\u0000)", loc, value)
        elif isinstance(value, float):
            if not math.isfinite(value):  # 1e999 parses as inf
                raise BodyRejected(422, "finite_number", "Numbers must be finite", loc, str(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise BodyRejected(422, "string_nul", "Keys cannot contain the NUL character (\\u0000)", loc, key)
                stack.append((item, (*loc, key)))
        elif isinstance(value, list):
            stack.extend((item, (*loc, index)) for index, item in enumerate(value))


def _url_problem(scope: Scope) -> str | None:
    path = scope.get("path", "")
    if _CONTROL.search(path):
        return "The URL path contains a control character (such as NUL); names and paths cannot hold them"
    if not _FILE_ROUTE.match(path) and any(len(segment) > MAX_SEGMENT for segment in path.split("/")):
        return f"A URL path segment is longer than {MAX_SEGMENT} characters; no name or id is that long"
    for name, value in scope.get("headers", []):
        if b"\x00" in value:
            return f"Header '{clip(name.decode('latin-1'), 60)}' contains a NUL character"
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if _CONTROL.search(key) or _CONTROL.search(value):
                return f"Query parameter '{clip(_CONTROL.sub('?', key), 60)}' contains a control character (such as NUL)"
    return None


class RequestBoundary:
    """See the module docstring. ``openai_surface(path)`` says which routes answer in the
    OpenAI ``{"error"}`` shape; ``max_json_bytes`` and ``max_replicas`` come from the settings."""

    def __init__(
        self, app: ASGIApp, *, max_json_bytes: int, max_replicas: int, openai_surface: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_replicas = max_replicas
        self.openai_surface = openai_surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_replicas_limit.set(self.max_replicas)
        checked = await self.check(scope, receive)
        if checked is GONE:
            return
        if isinstance(checked, Rejection):
            await self.reject(scope, send, checked)
            return
        await self.app(scope, receive if checked is PASS else replay(checked, receive), send)

    async def check(self, scope: Scope, receive: Receive) -> Rejection | bytes | object:
        """Check an HTTP request (see the module docstring). :data:`PASS`: not a JSON body, hand the
        request on as it is; the body (bytes), read whole and passed (its parsed document left in
        ``state[PARSED]``); a :class:`Rejection` to answer; :data:`GONE` when the client went away."""
        path = scope.get("path", "")
        problem = _url_problem(scope)
        if problem:
            return Rejection(400, "invalid_request", problem, use_detail_list=False)
        if scope["method"] not in _BODY_METHODS or _FILE_ROUTE.match(path):
            return PASS
        content_type = declared = None
        for key, value in scope.get("headers", ()):
            name = key.lower()
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        if not _is_json(content_type):
            return PASS
        too_large = (
            f"The request body is larger than {self.max_json_bytes} bytes (MODELYARD_MAX_JSON_BYTES); "
            "upload large content as files instead"
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_json_bytes:
            return Rejection(413, "payload_too_large", too_large, use_detail_list=False)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json_bytes:
                return Rejection(413, "payload_too_large", too_large, use_detail_list=False)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        if body:
            try:
                scope.setdefault("state", {})[PARSED] = parse_json(body)
            except BodyRejected as exc:
                return Rejection(exc.status, exc.kind, exc.message, loc=exc.loc, value=exc.value)
            except ValueError:
                pass  # not JSON: FastAPI answers its own 422 (json_invalid)
        return body

    async def reject(self, scope: Scope, send: Send, rejection: Rejection) -> None:
        await self._reject(scope, send, rejection.status, rejection.kind, rejection.message,
                           use_detail_list=rejection.use_detail_list, loc=rejection.loc, value=rejection.value)

    async def _reject(
        self, scope: Scope, send: Send, status: int, kind: str, message: str, *,
        use_detail_list: bool = True, loc: tuple[Any, ...] = (), value: Any = None,
    ) -> None:
        if self.openai_surface(scope.get("path", "")):
            where = ".".join(str(part) for part in loc)
            error = {"message": f"{where}: {message}" if where else message, "type": "invalid_request_error",
                     "param": str(loc[0]) if loc else None, "code": kind}
            payload: dict[str, Any] = {"error": error}
            status = 413 if status == 413 else 400
        elif use_detail_list:
            entry: dict[str, Any] = {"type": kind, "loc": ["body", *loc], "msg": message}
            if isinstance(value, str):
                entry["input"] = clip(value, ECHO_LIMIT)
            payload = {"detail": [entry]}
        else:
            payload = {"detail": message}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
