"""Requests are authenticated from memory; the database's generation counter decides when that memory
is stale: at once after a change made through this process, within ``GENERATION_TTL_S`` after a
change made through another one (here: a second app on the same database)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.auth import authority as authority_module
from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import admin_key


def test_a_revocation_here_is_in_force_at_once_and_no_database_read_for_known_tokens(
        client: Modelyard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authority_module, "GENERATION_TTL_S", 60.0)  # only a local change can refresh it
    client.members.add("default", "carol@example.com", roles=["Viewer"])
    key = client.access_keys.create(principal="carol@example.com")
    user = Modelyard(client.base_url, http_client=client._http, api_key=key.token)
    user.models.list("default")
    authority = client._http.app.state.authority  # type: ignore[attr-defined]
    reads = 0
    original = authority._generation.read

    def counted() -> int:
        nonlocal reads
        reads += 1
        return original()

    monkeypatch.setattr(authority._generation, "read", counted)
    for _ in range(20):
        user.models.list("default")
    assert reads == 0  # served from memory
    client.access_keys.revoke(key.jti)
    with pytest.raises(Exception, match="revoked"):
        user.models.list("default")
    assert reads >= 1


def test_a_revocation_through_another_process_is_in_force_within_the_ttl(settings: Settings) -> None:
    here, there = create_app(settings), create_app(settings)  # two servers, one database
    with TestClient(here) as a, TestClient(there) as b:
        admin = {"Authorization": f"Bearer {admin_key(settings)}"}
        made = a.post("/apis/auth/v2/access-keys", headers=admin,
                      json={"name": "k", "principal": "dave@example.com", "workspace": "default"})
        assert made.status_code in (200, 201), made.text
        token, jti = made.json()["token"], made.json()["jti"]
        assert a.post("/apis/entities/v2/workspaces/default/members", headers=admin,
                      json={"principal": "dave@example.com", "roles": ["Viewer"]}).status_code in (200, 201)
        user = {"Authorization": f"Bearer {token}"}
        path = "/apis/models/v2/workspaces/default/models"
        assert a.get(path, headers=user).status_code == 200
        assert b.delete(f"/apis/auth/v2/access-keys/{jti}", headers=admin).status_code == 200
        revoked_at = time.monotonic()
        assert b.get(path, headers=user).status_code == 401  # the process that changed it: at once
        while a.get(path, headers=user).status_code == 200:
            assert time.monotonic() - revoked_at < authority_module.GENERATION_TTL_S + 0.5
            time.sleep(0.05)
