"""The SDK sends a read-only request again when its connection fails without an answer (the race of a
kept-alive connection closed by the server as the client reuses it); never a request that changes state."""

from __future__ import annotations

import httpx
import pytest

from modelyard.client import APIConnectionError, Modelyard


def _flaky(failures: int, seen: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) <= failures:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"status": "ok"})

    return httpx.MockTransport(handle)


def test_a_read_is_sent_again_after_a_dropped_connection() -> None:
    seen: list[str] = []
    client = Modelyard("http://server", http_client=httpx.Client(transport=_flaky(2, seen)))
    assert client.health() == {"status": "ok"} and seen == ["GET", "GET", "GET"]


def test_retries_are_bounded_and_changes_are_never_resent() -> None:
    seen: list[str] = []
    client = Modelyard("http://server", http_client=httpx.Client(transport=_flaky(5, seen)), max_retries=2)
    with pytest.raises(APIConnectionError):
        client.health()
    assert seen == ["GET"] * 3
    seen.clear()
    with pytest.raises(APIConnectionError):
        client.request("POST", "/apis/entities/v2/workspaces", json={"name": "x1"})
    assert seen == ["POST"]
