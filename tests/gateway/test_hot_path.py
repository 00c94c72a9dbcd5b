"""The two hot routes are answered by ``gateway/fast.HotPath`` in front of the middleware stack. With it
turned off (``fast.HOT`` emptied) the same requests go through every middleware and the FastAPI
route. Both must answer alike, refusals included: the hot path runs the same checks with the same code."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from modelyard.client import Modelyard
from modelyard.gateway import fast

PATH = "/v1/chat/completions"
CHAT = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}


def _both(http: TestClient, monkeypatch: pytest.MonkeyPatch, **request: Any) -> tuple[httpx.Response, httpx.Response]:
    hot = http.post(PATH, **request)
    with monkeypatch.context() as patched:
        patched.setattr(fast, "HOT", frozenset())
        routed = http.post(PATH, **request)
    return hot, routed


@pytest.mark.parametrize("case", [
    "no key", "bad key", "unknown model", "nested too deep", "NUL in a string", "not an object",
    "no model", "too large", "control character in the query", "bad host",
])
def test_the_hot_path_answers_as_the_middleware_stack(client: Modelyard, case: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    http: TestClient = client._http  # type: ignore[assignment]
    key = http.headers["Authorization"]
    deep: Any = "x"
    for _ in range(80):
        deep = [deep]
    requests: dict[str, dict[str, Any]] = {
        "no key": {"json": CHAT, "headers": {"Authorization": ""}},
        "bad key": {"json": CHAT, "headers": {"Authorization": "Bearer nope"}},
        "unknown model": {"json": CHAT},
        "nested too deep": {"json": {**CHAT, "extra": deep}},
        "NUL in a string": {"json": {**CHAT, "user": "a\x00b"}},
        "not an object": {"json": [1, 2]},
        "no model": {"json": {"messages": CHAT["messages"]}},
        "too large": {"content": b'{"model": "' + b"x" * (http.app.state.settings.max_json_bytes + 10) + b'"}',
                      "headers": {"Content-Type": "application/json"}},
        "control character in the query": {"json": CHAT, "params": {"q": "a\x01"}},
        "bad host": {"json": CHAT, "headers": {"Host": "evil.example.com"}},
    }
    hot, routed = _both(http, monkeypatch, **requests[case])
    http.headers["Authorization"] = key
    assert hot.status_code == routed.status_code and hot.status_code >= 400, (hot.text, routed.text)
    assert hot.json() == routed.json() and "error" in hot.json(), (hot.text, routed.text)
    assert hot.headers.get("x-request-id") and routed.headers.get("x-request-id")
    assert hot.headers.get("www-authenticate") == routed.headers.get("www-authenticate")
