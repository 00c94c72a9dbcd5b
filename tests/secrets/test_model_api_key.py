"""A model's api_endpoint.api_key: stored only encrypted, masked on output, dropped when the url moves."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi import FastAPI

from modelyard.auth.crypto import Keyring
from modelyard.client import Modelyard
from modelyard.secrets.service import (
    API_KEY_FIELD,
    SecretUndecryptable,
    api_key_of,
    merge_api_endpoint,
    seal_api_key,
    shown_api_endpoint,
)

MODELS = "/apis/models/v2/workspaces/default/models"
KEY = "sk-live-0123456789abcdef"
MASK = "*" * (len(KEY) - 4) + "cdef"


def _stored(app: FastAPI, name: str) -> dict:
    with app.state.db.engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT api_endpoint FROM models WHERE name = :n"), {"n": name}).scalar_one()
    return raw if isinstance(raw, dict) else json.loads(raw)


def _raw_row(app: FastAPI, name: str) -> str:
    with app.state.db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM models WHERE name = :n"), {"n": name}).one()
    return repr(tuple(row))


def test_key_is_stored_only_encrypted(client: Modelyard, app: FastAPI) -> None:
    created = client.request("POST", MODELS, json={
        "name": "remote", "api_endpoint": {"url": "https://a.example/v1", "api_key": KEY, "model_id": "m"}})
    # a single entity carries every key of api_endpoint, as the reference sends it
    assert created.json()["api_endpoint"] == {"url": "https://a.example/v1", "api_key": MASK, "model_id": "m",
                                              "format": None}
    assert KEY not in _raw_row(app, "remote")
    stored = _stored(app, "remote")
    assert "api_key" not in stored and app.state.keyring.decrypt(stored[API_KEY_FIELD]) == KEY
    assert api_key_of(app.state.keyring, stored) == KEY

    client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://a.example/v1", "api_key": "sk-new-9999"}})
    assert "sk-new-9999" not in _raw_row(app, "remote")
    assert api_key_of(app.state.keyring, _stored(app, "remote")) == "sk-new-9999"
    for response in (client.request("GET", f"{MODELS}/remote"), client.request("GET", MODELS)):
        assert "sk-new-9999" not in response.text and API_KEY_FIELD not in response.text


def test_url_change_without_a_new_key_drops_the_key(client: Modelyard, app: FastAPI) -> None:
    client.request("POST", MODELS, json={"name": "remote", "api_endpoint": {"url": "https://a.example/v1", "api_key": KEY}})
    # the masked key echoed back with the same url keeps the key
    kept = client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://a.example/v1", "api_key": MASK}})
    assert kept.json()["api_endpoint"]["api_key"] == MASK
    assert api_key_of(app.state.keyring, _stored(app, "remote")) == KEY
    # the masked key echoed back with another url does not follow it there
    moved = client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://evil.example/v1", "api_key": MASK}})
    assert moved.json()["api_endpoint"]["api_key"] is None
    assert api_key_of(app.state.keyring, _stored(app, "remote")) is None
    # a url change with no key at all drops it too
    client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://a.example/v1", "api_key": KEY}})
    client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://b.example/v1"}})
    assert api_key_of(app.state.keyring, _stored(app, "remote")) is None
    # a new key with a new url is that url's key
    client.request("PATCH", f"{MODELS}/remote", json={"api_endpoint": {"url": "https://c.example/v1", "api_key": "sk-c-1234"}})
    assert api_key_of(app.state.keyring, _stored(app, "remote")) == "sk-c-1234"
    # a PATCH that does not touch api_endpoint keeps it
    client.request("PATCH", f"{MODELS}/remote", json={"description": "d"})
    assert api_key_of(app.state.keyring, _stored(app, "remote")) == "sk-c-1234"


def test_helpers() -> None:
    keyring = Keyring([Fernet.generate_key()])
    sealed = seal_api_key(keyring, {"url": "https://a.example", "api_key": KEY})
    assert set(sealed) == {"url", API_KEY_FIELD} and KEY not in json.dumps(sealed)
    assert shown_api_endpoint(keyring, sealed) == {"url": "https://a.example", "api_key": MASK}
    assert shown_api_endpoint(keyring, {"url": "https://a.example"}) == {"url": "https://a.example"}
    assert seal_api_key(keyring, None) is None and merge_api_endpoint(keyring, sealed, None) is None
    # a row written before encryption (a clear key) still reads, masks and re-seals
    legacy = {"url": "https://a.example", "api_key": "abc"}
    assert api_key_of(keyring, legacy) == "abc"
    assert shown_api_endpoint(keyring, legacy)["api_key"] == "***"
    resealed = merge_api_endpoint(keyring, legacy, {"url": "https://a.example", "api_key": "***"})
    assert "api_key" not in resealed and keyring.decrypt(resealed[API_KEY_FIELD]) == "abc"
    # another keyring cannot read it: a 409 for the gateway, never the ciphertext or a 500
    other = Keyring([Fernet.generate_key()])
    with pytest.raises(SecretUndecryptable) as err:
        api_key_of(other, sealed)
    assert "MODELYARD_SECRET_KEY" in err.value.message and err.value.status_code == 409
