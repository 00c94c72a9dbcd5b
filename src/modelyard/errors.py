"""The one error tree of the service layer.

Services raise these; a single handler in :mod:`modelyard.app` renders them as
``{"detail": "<message>"}`` with the class's status. ``code`` is stable and machine-readable,
so logs and the SDK can branch on it without parsing messages.
"""

from __future__ import annotations

ECHO_LIMIT = 200
"""At most this many characters of a client's input are repeated back in an error message."""


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text, cut to ``limit`` characters (with ``…`` when cut): for echoing input."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class ServiceError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something that cannot be done as given."""

    status_code = 400
    code = "invalid_request"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request clashes with the current state (e.g. deleting something still in use)."""

    status_code = 409
    code = "conflict"


class AlreadyExists(Conflict):
    code = "already_exists"


class PayloadTooLarge(ServiceError):
    """An upload above the configured file size limit."""

    status_code = 413
    code = "payload_too_large"


class RangeNotSatisfiable(ServiceError):
    status_code = 416
    code = "range_not_satisfiable"


class StorageUnavailable(ServiceError):
    """The fileset's storage (a bucket, a disk) failed; not the client's fault, and nothing was stored."""

    status_code = 502
    code = "storage_unavailable"


class Unprocessable(ServiceError):
    """Semantically invalid content that a schema cannot express."""

    status_code = 422
    code = "unprocessable"


class ApiError(ServiceError):
    """An error of the OpenAI-compatible surface (``/v1/...``), rendered as
    ``{"error": {"message", "type", "code"}}`` the way the OpenAI and Together SDKs parse it."""

    def __init__(
        self, status: int, message: str, *, code: str, kind: str = "invalid_request_error",
        retry_after: int | None = None, param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.code = code
        self.kind = kind
        self.retry_after = retry_after
        self.param = param

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
