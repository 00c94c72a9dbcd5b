"""The secrets routes over HTTP: CRUD, errors, encryption at rest, rotation, and no value in logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi import FastAPI

from modelyard.auth.crypto import Keyring
from modelyard.client import ConflictError, Modelyard, NotFoundError, UnprocessableEntityError
from modelyard.db import tables
from modelyard.db.engine import utcnow

BASE = "/apis/secrets/v2/workspaces"
VALUE = "hf_Sup3rS3cretTokenValue-9f8e7d"


def _create(client: Modelyard, workspace: str = "default", name: str = "hf-token", value: str = VALUE, **extra):
    return client.request("POST", f"{BASE}/{workspace}/secrets", json={"name": name, "value": value, **extra})


def _ciphertext(app: FastAPI, workspace: str, name: str) -> str:
    with app.state.db.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT ciphertext FROM secrets WHERE workspace = :w AND name = :n"), {"w": workspace, "n": name}
        ).scalar_one()


def test_crud(client: Modelyard) -> None:
    created = _create(client, description="Hugging Face")
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"name", "workspace", "description", "created_at", "updated_at"}
    assert body["name"] == "hf-token" and body["workspace"] == "default" and body["description"] == "Hugging Face"

    got = client.request("GET", f"{BASE}/default/secrets/hf-token").json()
    assert got == body

    _create(client, name="alpha", value="a-value")
    page = client.request("GET", f"{BASE}/default/secrets", params={"sort": "name", "page_size": 1}).json()
    assert [s["name"] for s in page["data"]] == ["alpha"]
    assert page["pagination"] == {"page": 1, "page_size": 1, "current_page_size": 1, "total_pages": 2,
                                  "total_results": 2}
    assert page["sort"] == "name" and page["filter"] == {}
    page = client.request("GET", f"{BASE}/default/secrets", params={"sort": "-name"}).json()
    assert [s["name"] for s in page["data"]] == ["hf-token", "alpha"]
    filtered = client.request("GET", f"{BASE}/default/secrets", params={"filter[name]": "alpha"}).json()
    assert [s["name"] for s in filtered["data"]] == ["alpha"]

    patched = client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"value": "new-value"})
    assert patched.status_code == 200 and patched.json()["description"] == "Hugging Face"
    assert "new-value" not in patched.text
    accessed = client.request("GET", f"{BASE}/default/secrets/hf-token/access").json()
    assert accessed == {"name": "hf-token", "workspace": "default", "value": "new-value"}

    cleared = client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"description": None}).json()
    assert cleared["description"] is None
    assert client.request("GET", f"{BASE}/default/secrets/hf-token/access").json()["value"] == "new-value"

    assert client.request("DELETE", f"{BASE}/default/secrets/hf-token").status_code == 204
    with pytest.raises(NotFoundError) as err:
        client.request("GET", f"{BASE}/default/secrets/hf-token")
    assert err.value.response.json()["detail"] == "Secret with workspace 'default' and name 'hf-token' not found"


def test_duplicate_is_409(client: Modelyard) -> None:
    _create(client)
    with pytest.raises(ConflictError) as err:
        _create(client, value="other")
    assert err.value.response.json()["detail"] == "Secret with workspace 'default' and name 'hf-token' already exists"
    # the same name in another workspace is another secret
    client.workspaces.create("team")
    assert _create(client, workspace="team").status_code == 201


def test_unknown_workspace_and_secret_are_404(client: Modelyard) -> None:
    for method, path in (("POST", f"{BASE}/ghost/secrets"), ("GET", f"{BASE}/ghost/secrets"),
                         ("GET", f"{BASE}/ghost/secrets/x1"), ("GET", f"{BASE}/default/secrets/x1"),
                         ("PATCH", f"{BASE}/default/secrets/x1"), ("DELETE", f"{BASE}/default/secrets/x1"),
                         ("GET", f"{BASE}/default/secrets/x1/access")):
        body = {"name": "x1", "value": "v"} if method == "POST" else {} if method == "PATCH" else None
        with pytest.raises(NotFoundError):
            client.request(method, path, json=body)


@pytest.mark.parametrize("body", [
    {"name": "hf-token", "value": VALUE, "colour": "red"},
    {"name": "HF_Token", "value": VALUE},
    {"name": "bad--name", "value": VALUE},
    {"name": "hf-token"},
    {"name": "hf-token", "value": ""},
    {"name": "hf-token", "value": VALUE + "x" * (64 * 1024)},
])
def test_bad_create_is_422_without_echoing_the_value(client: Modelyard, body: dict) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.request("POST", f"{BASE}/default/secrets", json=body)
    assert VALUE not in err.value.response.text


def test_value_limit_is_64_kib_of_utf8(client: Modelyard) -> None:
    assert _create(client, value="x" * (64 * 1024)).status_code == 201
    with pytest.raises(UnprocessableEntityError) as err:
        _create(client, name="wide", value="é" * (32 * 1024 + 1))  # 2 bytes each
    assert "65536" in err.value.response.json()["detail"]
    with pytest.raises(UnprocessableEntityError):
        client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"value": ""})
    with pytest.raises(UnprocessableEntityError):
        client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"color": "red"})


def test_value_is_never_in_a_response_but_access(client: Modelyard) -> None:
    responses = [
        _create(client),
        client.request("GET", f"{BASE}/default/secrets"),
        client.request("GET", f"{BASE}/default/secrets/hf-token"),
        client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"description": "d"}),
        client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"value": VALUE}),
    ]
    for response in responses:
        assert VALUE not in response.text
        assert "value" not in json.dumps(response.json().get("data", response.json()))
    assert client.request("GET", f"{BASE}/default/secrets/hf-token/access").json()["value"] == VALUE


def test_stored_only_encrypted(client: Modelyard, app: FastAPI) -> None:
    _create(client)
    stored = _ciphertext(app, "default", "hf-token")
    assert VALUE not in stored
    assert app.state.keyring.decrypt(stored) == VALUE


def test_workspace_holding_a_secret_cannot_be_deleted(client: Modelyard) -> None:
    client.workspaces.create("team")
    _create(client, workspace="team")
    with pytest.raises(ConflictError):
        client.request("DELETE", "/apis/entities/v2/workspaces/team")
    client.request("DELETE", f"{BASE}/team/secrets/hf-token")
    assert client.request("DELETE", "/apis/entities/v2/workspaces/team").status_code == 204


@pytest.fixture
def signing_key(client: Modelyard, app: FastAPI) -> Iterator[str]:
    """A signing key row encrypted with this test's keyring (removed after: other tests' keyrings differ)."""
    with app.state.db.session(write=True) as session:
        session.add(tables.SigningKey(kid="k1", algorithm="EdDSA", private_key=app.state.keyring.encrypt("PEM"),
                                      public_jwk={"kty": "OKP"}, created_at=utcnow()))
    yield "k1"
    with app.state.db.session(write=True) as session:
        session.execute(sa.delete(tables.SigningKey).where(tables.SigningKey.kid == "k1"))


def test_rotation_reencrypts_everything(client: Modelyard, app: FastAPI, signing_key: str) -> None:
    _create(client)
    _create(client, name="second", value="second-value")
    client.request("POST", "/apis/models/v2/workspaces/default/models",
                   json={"name": "remote", "api_endpoint": {"url": "https://x.example/v1", "api_key": "sk-remote-key"}})
    keyring: Keyring = app.state.keyring
    key_file = app.state.settings.home / "secret.key"
    keys_before = key_file.read_bytes().split()
    before = {name: _ciphertext(app, "default", name) for name in ("hf-token", "second")}
    with app.state.db.engine.connect() as conn:
        pem_before = conn.execute(sa.text("SELECT private_key FROM signing_keys WHERE kid='k1'")).scalar_one()
        model_before = conn.execute(sa.text("SELECT api_endpoint FROM models WHERE name='remote'")).scalar_one()

    response = client.request("POST", "/apis/secrets/v2/rotate-encryption-keys")
    assert response.status_code == 202
    assert response.json() == {"rotated_secrets": 2, "success": True}

    keys_after = key_file.read_bytes().split()
    assert len(keys_after) == len(keys_before) + 1 and keys_after[1:] == keys_before
    assert app.state.keyring is not keyring
    new_primary = Keyring([keys_after[0]])  # everything now decrypts with the new key alone
    for name, old in before.items():
        stored = _ciphertext(app, "default", name)
        assert stored != old
        assert new_primary.decrypt(stored) == (VALUE if name == "hf-token" else "second-value")
    assert client.request("GET", f"{BASE}/default/secrets/second/access").json()["value"] == "second-value"
    with app.state.db.engine.connect() as conn:
        pem_after = conn.execute(sa.text("SELECT private_key FROM signing_keys WHERE kid='k1'")).scalar_one()
        model_after = conn.execute(sa.text("SELECT api_endpoint FROM models WHERE name='remote'")).scalar_one()
    assert pem_after != pem_before and new_primary.decrypt(pem_after) == "PEM"
    model_before, model_after = (m if isinstance(m, dict) else json.loads(m) for m in (model_before, model_after))
    assert model_after["api_key_encrypted"] != model_before["api_key_encrypted"]
    assert new_primary.decrypt(model_after["api_key_encrypted"]) == "sk-remote-key"


def test_undecryptable_value_is_409_naming_the_key_setting(client: Modelyard, app: FastAPI) -> None:
    _create(client)
    client.request("POST", "/apis/models/v2/workspaces/default/models",
                   json={"name": "remote", "api_endpoint": {"url": "https://x.example/v1", "api_key": "sk-remote-key"}})
    app.state.keyring = Keyring([Fernet.generate_key()])  # as if the server restarted with another key
    with pytest.raises(ConflictError) as err:
        client.request("GET", f"{BASE}/default/secrets/hf-token/access")
    assert "MODELYARD_SECRET_KEY" in err.value.response.json()["detail"]
    with pytest.raises(ConflictError) as err:
        client.request("POST", "/apis/secrets/v2/rotate-encryption-keys")
    assert "MODELYARD_SECRET_KEY" in err.value.response.json()["detail"]
    # metadata still reads, the model still shows (with a marker instead of the masked key)
    assert client.request("GET", f"{BASE}/default/secrets/hf-token").status_code == 200
    shown = client.request("GET", "/apis/models/v2/workspaces/default/models/remote").json()
    assert "MODELYARD_SECRET_KEY" in shown["api_endpoint"]["api_key"]
    # a new value repairs the secret
    client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"value": "fresh"})
    assert client.request("GET", f"{BASE}/default/secrets/hf-token/access").json()["value"] == "fresh"


def test_value_never_logged(client: Modelyard, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    _create(client)
    client.request("GET", f"{BASE}/default/secrets/hf-token/access")
    client.request("PATCH", f"{BASE}/default/secrets/hf-token", json={"value": VALUE + "-2"})
    with pytest.raises(ConflictError):
        _create(client)
    assert any("INSERT INTO secrets" in r.getMessage() for r in caplog.records), "SQL was not captured"
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert VALUE not in text, record.getMessage()
    assert VALUE not in caplog.text
