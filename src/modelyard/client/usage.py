"""``client.usage``: usage records (``GET /v1/usage``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelyard.client.types_usage import UsageList

if TYPE_CHECKING:
    from modelyard.client.client import Modelyard


def _iso(value: datetime | str) -> str:
    """A datetime as ISO-8601 (a naive one is taken as UTC); a string as given."""
    if isinstance(value, str):
        return value
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()


class Usage:
    def __init__(self, client: Modelyard) -> None:
        self._client = client

    def list(self, *, model: str | None = None, start: datetime | str | None = None,
             end: datetime | str | None = None, granularity: str | None = None,
             workspace: str | None = None) -> UsageList:
        """Requests, errors, tokens and latency percentiles per model and endpoint per ``granularity``
        (``minute``, ``hour`` — the server's default — or ``day``) from ``start`` (default: 24 hours
        before ``end``) to ``end`` (exclusive; default: now), in ``workspace`` (default: the key's)."""
        params: dict[str, Any] = {}
        if model is not None:
            params["model"] = model
        if start is not None:
            params["from"] = _iso(start)
        if end is not None:
            params["to"] = _iso(end)
        if granularity is not None:
            params["granularity"] = granularity
        headers = {"X-Modelyard-Workspace": workspace} if workspace else None
        return UsageList.model_validate(self._client.request("GET", "/v1/usage", params=params,
                                                             headers=headers).json())
