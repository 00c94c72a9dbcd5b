"""Error classes per HTTP status, in the manner of openai-python."""

from __future__ import annotations

from typing import Any

import httpx


class ModelyardError(Exception):
    """Base of everything the SDK raises."""


class APIConnectionError(ModelyardError):
    """The server could not be reached."""


class StreamError(ModelyardError):
    """The server reported an error in the middle of a streamed answer (after its 200)."""

    def __init__(self, message: str, code: str | int | None = None) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


class APIStatusError(ModelyardError):
    """The server answered with a 4xx or 5xx status."""

    status_code: int = 0

    def __init__(self, response: httpx.Response, body: Any) -> None:
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.detail = body.get("detail") if isinstance(body, dict) else body
        # the OpenAI-compatible routes (/v1/...) answer {"error": {"message", "type", "code"}}
        error = body.get("error") if isinstance(body, dict) else None
        self.code: str | None = error.get("code") if isinstance(error, dict) else None
        if isinstance(error, dict) and self.detail is None:
            self.detail = error.get("message")
        super().__init__(f"{response.status_code}: {self._describe()}")

    def _describe(self) -> str:
        if isinstance(self.detail, list):  # FastAPI validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in self.detail
            )
        return str(self.detail)


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    """401: no key, or a key the server does not accept (malformed, expired, suspended, revoked)."""

    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    """429: too many requests (or failed authentications) from this client; ``retry_after`` is in seconds."""

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        value = self.response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class InternalServerError(APIStatusError):
    status_code = 500


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for(response: httpx.Response) -> APIStatusError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(response, body)
