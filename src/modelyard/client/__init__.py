"""The Modelyard Python SDK.

    from modelyard.client import Modelyard
    client = Modelyard("http://127.0.0.1:8000")
    model = client.models.create("default", name="llama-3-8b")
    for adapter in client.adapters.list("default", filters={"enabled": True}).auto_paging_iter():
        ...

Responses are the server's own wire models, so client and server cannot drift apart. Bodies
are sent as given (the server validates), which lets callers see the server's exact errors.
"""

from modelyard.client.client import Modelyard, SyncPage
from modelyard.client.errors import (
    APIConnectionError,
    APIStatusError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    ModelyardError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    StreamError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "Modelyard",
    "ModelyardError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "StreamError",
    "SyncPage",
    "UnprocessableEntityError",
]
