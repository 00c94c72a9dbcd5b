"""The Modelyard Python SDK.

    from modelyard.client import Modelyard
    client = Modelyard("http://127.0.0.1:8000")  # key: api_key=, MODELYARD_API_KEY or the credentials file
    model = client.models.create("default", name="llama-3-8b")
    for adapter in client.adapters.list("default", filters={"enabled": True}).auto_paging_iter():
        ...

Responses are the server's own wire models, so client and server cannot drift apart. Bodies
are sent as given (the server validates), which lets callers see the server's exact errors.
"""

from modelyard.client.client import Modelyard, SyncPage
from modelyard.client.credentials import CredentialsError, load_api_key, save_login
from modelyard.client.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    ModelyardError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    StreamError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "CredentialsError",
    "InternalServerError",
    "Modelyard",
    "ModelyardError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "StreamError",
    "SyncPage",
    "UnprocessableEntityError",
    "load_api_key",
    "save_login",
]
