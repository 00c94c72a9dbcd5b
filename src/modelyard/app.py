"""The FastAPI application: routers, the one error handler, ``/health``, request logs.

The schema is migrated when the app starts (never ``create_all``), so a new database and an old
one both come up at the newest revision.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from modelyard import __version__
from modelyard.adapters.router import router as adapters_router
from modelyard.audit.middleware import AuditTrail
from modelyard.audit.router import router as audit_router
from modelyard.auth.authority import BOOTSTRAP_PRINCIPAL, Authority
from modelyard.auth.crypto import Keyring
from modelyard.auth.middleware import Authenticate, FailureLimiter
from modelyard.auth.policy import is_public
from modelyard.auth.router import router as auth_router
from modelyard.boundary import RequestBoundary
from modelyard.config import Settings
from modelyard.console import mount_console, mount_offline_docs
from modelyard.db.engine import Database, unavailable
from modelyard.endpoints.router import router as endpoints_router
from modelyard.endpoints.supervisor import Supervisor
from modelyard.errors import ECHO_LIMIT, ApiError, ServiceError, clip
from modelyard.filesets.router import router as filesets_router
from modelyard.gateway import pool as gateway_pool
from modelyard.gateway.fast import HotPath, database_unavailable_response, error_response
from modelyard.gateway.messages import router as messages_router
from modelyard.gateway.registry import router as gateway_registry_router
from modelyard.gateway.router import router as gateway_router
from modelyard.methods import HttpMethods
from modelyard.models.router import router as models_router
from modelyard.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelyard.observability.metrics import ServerMetrics
from modelyard.observability.middleware import Observe, RequestIdFilter
from modelyard.providers.poller import ProviderPoller
from modelyard.providers.router import router as providers_router
from modelyard.secrets.router import router as secrets_router
from modelyard.usage.recorder import UsageRecorder
from modelyard.usage.router import router as usage_router
from modelyard.virtual_models.router import router as virtual_models_router
from modelyard.workspaces.router import router as workspaces_router

log = logging.getLogger("modelyard")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _plain(value: Any) -> Any:
    return _ANSI.sub("", value) if isinstance(value, str) else value


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with whatever ``extra=`` fields the call passed. Terminal colour
    codes are stripped: uvicorn adds a ``color_message`` copy of its messages, which is dropped."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _plain(record.getMessage()),
        }
        entry.update({k: _plain(v) for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            entry["exc"] = _plain(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())  # every line logged while a request is handled names its id
    if settings.log_json:
        handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())




_GATEWAY_OPENAI = re.compile(r"^/apis/inference-gateway/v2/workspaces/[^/]+/(openai|model|provider)/")


def _openai_surface(path: str) -> bool:
    """Routes that answer errors in OpenAI's shape: /v1 and the gateway's openai, model and provider routes."""
    return path.startswith("/v1/") or _GATEWAY_OPENAI.match(path) is not None


def _safe_input(value: Any) -> Any:
    """A 422's ``input`` as the client may see it: JSON-serialisable (no NaN/Infinity, which
    JSON cannot carry) and at most :data:`ECHO_LIMIT` characters of it."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value if not isinstance(value, int) or abs(value) < 10**18 else clip(str(value))
    try:
        text = json.dumps(jsonable_encoder(value), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return clip(repr(value))
    return value if len(text) <= ECHO_LIMIT else clip(text)


def _safe_error(error: dict[str, Any]) -> dict[str, Any]:
    error = {k: v for k, v in error.items() if k != "url"}
    error["loc"] = [clip(part, 100) if isinstance(part, str) else part for part in error.get("loc", ())]
    if "input" in error:
        error["input"] = _safe_input(error["input"])
    if "ctx" in error:
        error["ctx"] = {k: _safe_input(v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                        for k, v in error["ctx"].items()}
    return error


def _authority(settings: Settings, db: Database, keyring: Keyring) -> Authority:
    """The app's authority; on a database with no PlatformAdmin yet, one is made and its key written to
    ``{home}/credentials`` (mode 0600), where the CLI and the SDK find it. The key is never logged."""
    oidc = None
    if settings.oidc_issuer:
        from modelyard.auth.oidc import OidcVerifier

        if not settings.oidc_audience:
            raise ValueError("MODELYARD_OIDC_AUDIENCE must be set with MODELYARD_OIDC_ISSUER")
        oidc = OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_principal_claim)
    authority = Authority(db, keyring, enabled=settings.auth == "on", oidc=oidc)
    authority.load_signing_keys()
    if authority.enabled:
        token = authority.bootstrap()
        if token is not None:
            from modelyard.client.credentials import save_default

            path = save_default(settings.home, token, BOOTSTRAP_PRINCIPAL)
            log.info("created the PlatformAdmin access key", extra={"principal": BOOTSTRAP_PRINCIPAL,
                                                                    "credentials": str(path)})
    else:
        log.warning("authentication is off (MODELYARD_AUTH=off): every caller may do everything")
    return authority


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        db.migrate()
        app.state.db = db
        app.state.keyring = Keyring.load(settings.secret_key, settings.home)
        app.state.authority = _authority(settings, db, app.state.keyring)
        log.info("database ready", extra={"database": db.backend})
        supervisor = Supervisor(db, settings, app.state.metrics)
        app.state.metrics.watch_runtime(supervisor.stats)
        app.state.supervisor = supervisor
        await supervisor.start()
        app.state.provider_poller = ProviderPoller(db, settings, app.state)
        await app.state.provider_poller.start()
        app.state.usage = UsageRecorder(db, settings.usage_flush_interval) if settings.usage == "on" else None
        if app.state.usage is not None:
            await app.state.usage.start()
        try:
            yield
        finally:
            await app.state.provider_poller.stop()
            await supervisor.stop()
            await gateway_pool.of(app.state).close()
            if app.state.usage is not None:
                await app.state.usage.stop()  # the last flush: nothing counted is lost on a clean stop
            app.state.authority.close()
            db.dispose()

    app = FastAPI(
        redoc_url=None,  # ReDoc loads its script from a CDN; /docs is served offline (console/docs.py)
        title="Modelyard",
        version=__version__,
        summary="Registry and serving layer for fine-tuned models",
        lifespan=lifespan,
        separate_input_output_schemas=False,
        # FastAPI's built-in OpenTelemetry looks up the global providers (environment reads) on every
        # request even when none is configured; the server's own metrics are Prometheus (/metrics)
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = ServerMetrics(enabled=settings.metrics == "on")
    app.state.usage = None
    for router in (
        gateway_router, workspaces_router, models_router, adapters_router, filesets_router, endpoints_router,
        auth_router, secrets_router, audit_router, providers_router, gateway_registry_router, messages_router,
        virtual_models_router, usage_router,
    ):
        app.include_router(router)
    mount_console(app)  # /console (404 when MODELYARD_CONSOLE=off)
    mount_offline_docs(app)  # /docs with Swagger UI served by this process, not a CDN

    @app.get("/health", tags=["health"])
    def health(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        ok = db.ping()
        body: dict[str, Any] = {"status": "ok" if ok else "error", "version": __version__, "database": db.backend}
        if not ok:
            body["detail"] = "database is not reachable"
        supervisor: Supervisor | None = getattr(request.app.state, "supervisor", None)
        if supervisor is not None:  # what this server runs right now (no database read)
            stats = supervisor.stats()
            body["engines"] = {
                "endpoints": len(stats),
                "replicas": sum(row["replicas"]["ready"] for row in stats),
                "requests_in_flight": sum(row["in_flight"] for row in stats),
            }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=settings.metrics == "on",
             summary="Prometheus metrics (text format)", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus' text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics(request: Request) -> Response:
        if settings.metrics != "on":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return Response(request.app.state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _openai_surface(request.url.path):  # the OpenAI/Together SDKs expect their error shape
            first = exc.errors()[0]
            where = clip(".".join(str(part) for part in first["loc"] if part != "body"), 100)
            message = f"{where}: {clip(first['msg'], 2 * ECHO_LIMIT)}" if where else clip(first["msg"], 2 * ECHO_LIMIT)
            param = where.split(".")[0] if where else None
            return JSONResponse(ApiError(400, message, code="invalid_request", param=param).body(), status_code=400)
        errors = []
        for error in exc.errors():
            if error.get("type") == "extra_forbidden":
                field = error["loc"][-1]
                error = {**error, "msg": f"Unknown field '{clip(str(field), 100)}': remove it (it is not part of this request)"}
            errors.append(_safe_error(error))
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        """The database is down, restarting or dropped the connection: 503 with ``Retry-After`` (the
        pool reconnects by itself), in the route family's error shape. Any other database error is a bug."""
        if not unavailable(exc):
            return await unexpected(request, exc)
        log.warning("database unavailable", extra={"method": request.method, "path": request.url.path,
                                                   "error": str(exc).splitlines()[0][:200]})
        return database_unavailable_response(_openai_surface(request.url.path))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"method": request.method, "path": request.url.path})
        return JSONResponse({"detail": "Internal server error"}, status_code=500)

    boundary_options = {"max_json_bytes": settings.max_json_bytes, "max_replicas": settings.max_replicas,
                        "openai_surface": _openai_surface}
    auth_options = {
        "authority": lambda: app.state.authority, "allowed_hosts": settings.allowed_hosts,
        "failures_per_minute": settings.auth_failures_per_minute, "openai_surface": _openai_surface,
        "trusted_workspaces": settings.trusted_fileset_workspaces,
        "open_paths": frozenset() if settings.metrics_require_key else frozenset({"/metrics"}),
        "limiter": FailureLimiter(settings.auth_failures_per_minute),  # one count of failures for both entries
    }
    app.add_middleware(RequestBoundary, **boundary_options)
    declare_error_responses(app)
    app.add_middleware(HttpMethods, routes=app.router.routes)
    app.add_middleware(Authenticate, **auth_options)
    app.add_middleware(AuditTrail)
    # the two hot routes (gateway/fast.py): the same checks as Authenticate and RequestBoundary, then the proxy
    app.add_middleware(HotPath, authenticate=Authenticate(None, **auth_options),  # type: ignore[arg-type]
                       boundary=RequestBoundary(None, **boundary_options))  # type: ignore[arg-type]
    app.add_middleware(Observe, metrics=app.state.metrics)
    return app


_DETAIL_SCHEMA = {
    "title": "Detail", "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string", "title": "Detail"}},
    "description": "The error body of the registry and files routes.",
}
_OPENAI_ERROR_SCHEMA = {
    "title": "OpenAIError", "type": "object", "required": ["error"],
    "description": "The error body of the OpenAI-compatible routes (/v1, the gateway prefix).",
    "properties": {"error": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string"}, "type": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
    }}},
}
_WHY = {
    400: "a malformed request (control characters, a bad filter, a value the rules refuse)",
    401: "no valid access key: missing, malformed, expired, suspended or revoked (WWW-Authenticate: Bearer)",
    403: "the caller's role or the key's scopes do not allow it (or trust_remote_code outside a trusted workspace)",
    404: "no such workspace or entity",
    409: "conflicts with the current state (a duplicate, or data still in use)",
    413: "the request body is larger than MODELYARD_MAX_JSON_BYTES (or a file than MODELYARD_MAX_FILE_SIZE)",
    416: "the Range cannot be satisfied",
    422: "the request does not validate",
    429: "too many failed authentications from this address; see Retry-After",
    502: "the fileset's storage failed; nothing was stored",
    503: "the database (or the endpoint's engine) is unavailable for now; see Retry-After",
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """What an operation can answer besides success: every route meets the request boundary (400;
    413 with a body) and database outages (503); a path, query or header parameter can name nothing
    (404) or fail validation (422); a change can conflict (409); files add storage (502) and ranges."""
    if is_public(path):
        return {400, 503}
    statuses = {400, 401, 403, 429, 503}
    if "requestBody" in operation or method in ("post", "put", "patch"):
        statuses |= {413, 422}
    if operation.get("parameters"):
        statuses |= {404, 422}
    if method in ("post", "put", "patch", "delete"):
        statuses |= {404, 409}
    if "/filesets" in path:
        statuses |= {404, 502}
        if "/-/" in path and method in ("get", "head"):
            statuses.add(416)
    return statuses


def declare_error_responses(app: FastAPI) -> None:
    """List in the OpenAPI every error status each operation can answer, with the body shape of its
    route family (``{"detail"}`` on the reference's routes, OpenAI's ``{"error"}`` on ``/v1`` and the
    gateway prefix, where validation errors are that shape too). Statuses a route declares itself,
    with a more precise description, are kept."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Detail"], schemas["OpenAIError"] = _DETAIL_SCHEMA, _OPENAI_ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            openai = _openai_surface(path)
            ref = {"$ref": "#/components/schemas/" + ("OpenAIError" if openai else "Detail")}
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for status in sorted(_statuses(path, method, operation)):
                    if status == 422 and openai:  # FastAPI's own 422 body is not what these routes send
                        responses["422"] = {"description": _WHY[422], "content": {"application/json": {"schema": ref}}}
                    elif str(status) not in responses:
                        responses[str(status)] = {"description": _WHY[status],
                                                  "content": {"application/json": {"schema": ref}}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
