"""OIDC tokens: a real issuer on a local port (discovery and JWKS over HTTP), tokens minted with PyJWT."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelyard.auth.oidc import REFETCH_INTERVAL_S, AuthError, OidcIdentity, OidcVerifier
from tests.conftest import free_port

AUDIENCE = "modelyard"


class FakeIssuer:
    """Discovery and JWKS over real HTTP; ``keys`` is what the JWKS publishes (kid -> private key)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.hits = {"discovery": 0, "jwks": 0}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadingHTTPServer | None = None

    def add_key(self, kid: str, key: Any | None = None) -> Any:
        self.keys[kid] = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        entries = []
        for kid, key in self.keys.items():
            entry = json.loads(jwt.algorithms.get_default_algorithms()[_alg(key)].to_jwk(key.public_key()))
            entries.append({**entry, "kid": kid, "use": "sig"})
        return {"keys": entries}

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    issuer.hits["discovery"] += 1
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    issuer.hits["jwks"] += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def token(self, kid: str = "k1", *, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "u-1", "email": "alice@example.com",
                   "iat": now, "exp": now + 300, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        signing = key or self.keys[kid]
        return jwt.encode(payload, signing, algorithm=_alg(signing), headers={"kid": kid})


def _alg(key: Any) -> str:
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer()
    fake.add_key("k1")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(issuer: FakeIssuer, clock: Clock) -> Iterator[OidcVerifier]:
    v = OidcVerifier(issuer.url, AUDIENCE, clock=clock)
    yield v
    v.close()


def reason(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_good_token(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    exp = int(time.time()) + 120
    identity = verifier.verify(issuer.token(scope="openid models:read files:write profile", exp=exp))
    assert identity == OidcIdentity("alice@example.com", frozenset({"models:read", "files:write"}), exp)
    assert verifier.owns(issuer.token())
    assert verifier.verify(issuer.token()).scopes is None  # no scope claim: not narrowed
    assert verifier.verify(issuer.token(scope="openid email")).scopes is None
    assert verifier.verify(issuer.token(scp=["models:write", "offline"])).scopes == frozenset({"models:write"})
    assert issuer.hits == {"discovery": 1, "jwks": 1}  # the keys are cached


def test_es256_and_another_principal_claim(issuer: FakeIssuer, clock: Clock) -> None:
    issuer.add_key("ec", ec.generate_private_key(ec.SECP256R1()))
    verifier = OidcVerifier(issuer.url, AUDIENCE, "preferred_username", clock=clock)
    assert verifier.verify(issuer.token("ec", preferred_username="bob")).principal == "bob"
    assert reason(verifier, issuer.token("ec")) == "principal claim 'preferred_username' missing"


def test_expired_and_not_yet_valid(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    now = int(time.time())
    assert reason(verifier, issuer.token(exp=now - 60)) == "token expired"
    assert verifier.verify(issuer.token(exp=now - 10)).principal == "alice@example.com"  # within the leeway
    assert "not valid yet" in reason(verifier, issuer.token(nbf=now + 120))
    assert reason(verifier, issuer.token(exp=None)) == "token has no 'exp' claim"


def test_wrong_audience_and_issuer(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    assert reason(verifier, issuer.token(aud="someone-else")) == "token audience is not 'modelyard'"
    other = "https://elsewhere.example.com"
    assert reason(verifier, issuer.token(iss=other)) == f"token issuer is not '{issuer.url}'"
    assert not verifier.owns(issuer.token(iss=other))
    assert not verifier.owns("not-a-jwt")


def test_principal_claim_missing_or_unverified(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    assert reason(verifier, issuer.token(email=None)) == "principal claim 'email' missing"
    assert reason(verifier, issuer.token(email="")) == "principal claim 'email' missing"
    assert "not verified" in reason(verifier, issuer.token(email_verified=False))


def test_tampered_signature(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    token = issuer.token()
    head, _payload, signature = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(token, options={"verify_signature": False}), "email": "mallory@example.com"}
    ).encode()).decode()
    assert reason(verifier, f"{head}.{forged}.{signature}") == "token signature is invalid"
    # signed by a key the issuer never published, under a kid it did publish
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason(verifier, issuer.token("k1", key=stranger)) == "token signature is invalid"


def test_refused_algorithms(issuer: FakeIssuer, verifier: OidcVerifier) -> None:
    unsigned = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "email": "a@b.c", "exp": time.time() + 60},
                          None, algorithm="none", headers={"kid": "k1"})
    assert "'none' is not accepted" in reason(verifier, unsigned)
    # HS256 with the public key as the secret: the classic confusion attack
    public_pem = issuer.keys["k1"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    payload = {"iss": issuer.url, "aud": AUDIENCE, "email": "a@b.c", "exp": int(time.time()) + 60}
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(payload).encode())
    mac = jwt.utils.base64url_encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    assert "'HS256' is not accepted" in reason(verifier, (header + b"." + body + b"." + mac).decode())
    assert "malformed" in reason(verifier, "garbage")


def test_unknown_kid_refetches_at_most_once_per_interval(
    issuer: FakeIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    verifier.verify(issuer.token())
    assert issuer.hits["jwks"] == 1
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clock.now += REFETCH_INTERVAL_S  # long enough since the last fetch: one refetch
    assert reason(verifier, issuer.token("nope", key=stranger)) == "token signing key 'nope' is not one of the issuer's keys"
    assert issuer.hits["jwks"] == 2
    for _ in range(20):  # a stream of bad tokens within the interval: no more fetches
        reason(verifier, issuer.token("nope", key=stranger))
        clock.now += 1
    assert issuer.hits["jwks"] == 2
    clock.now += REFETCH_INTERVAL_S
    reason(verifier, issuer.token("nope", key=stranger))
    assert issuer.hits["jwks"] == 3
    assert verifier.verify(issuer.token()).principal == "alice@example.com"  # good tokens still pass
    assert issuer.hits["jwks"] == 3


def test_key_rotation_at_the_issuer(issuer: FakeIssuer, verifier: OidcVerifier, clock: Clock) -> None:
    verifier.verify(issuer.token())
    issuer.add_key("k2")
    del issuer.keys["k1"]
    clock.now += REFETCH_INTERVAL_S
    assert verifier.verify(issuer.token("k2")).principal == "alice@example.com"  # the new key is fetched
    assert issuer.hits["jwks"] == 2
    old_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clock.now += REFETCH_INTERVAL_S
    assert "is not one of the issuer's keys" in reason(verifier, issuer.token("k1", key=old_key))


def test_cache_expires(issuer: FakeIssuer, clock: Clock) -> None:
    verifier = OidcVerifier(issuer.url, AUDIENCE, cache_seconds=60, clock=clock)
    verifier.verify(issuer.token())
    clock.now += 59
    verifier.verify(issuer.token())
    assert issuer.hits["jwks"] == 1
    clock.now += 2
    verifier.verify(issuer.token())
    assert issuer.hits["jwks"] == 2


def test_issuer_unreachable(issuer: FakeIssuer, clock: Clock) -> None:
    token = issuer.token()
    issuer.stop()
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock)
    assert reason(verifier, token) == "the OIDC issuer's keys could not be fetched"
    assert reason(verifier, token) == "the OIDC issuer's keys could not be fetched"  # no second try so soon


def test_issuer_down_after_the_first_fetch_keeps_the_cached_keys(issuer: FakeIssuer, clock: Clock) -> None:
    verifier = OidcVerifier(issuer.url, AUDIENCE, cache_seconds=60, clock=clock)
    verifier.verify(issuer.token())
    issuer.stop()
    clock.now += 120  # the cache expired and the refetch fails: the keys held still verify
    assert verifier.verify(issuer.token()).principal == "alice@example.com"


def test_issuer_answers_garbage(clock: Clock) -> None:
    port = free_port()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = b"<html>not json</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode({"iss": url, "aud": AUDIENCE, "email": "a@b.c", "exp": int(time.time()) + 60},
                           key, algorithm="RS256", headers={"kid": "k"})
        assert reason(OidcVerifier(url, AUDIENCE, clock=clock), token) == "the OIDC issuer's keys could not be fetched"
    finally:
        server.shutdown()
        server.server_close()


def test_end_to_end_through_the_app(issuer: FakeIssuer, database_url: str, tmp_path: Any) -> None:
    """An OIDC token reaches the registry as its principal: it sees the workspaces it is a member of."""
    from fastapi.testclient import TestClient

    from modelyard.app import create_app
    from modelyard.config import Settings
    from tests.conftest import _reset, admin_key

    _reset(database_url)
    settings = Settings(home=tmp_path / "home", database_url=database_url, oidc_issuer=issuer.url,
                        oidc_audience=AUDIENCE)
    with TestClient(create_app(settings)) as http:
        admin = {"Authorization": f"Bearer {admin_key(settings)}"}
        for name in ("alices", "others"):
            assert http.post("/apis/entities/v2/workspaces", json={"name": name}, headers=admin).status_code == 201
        member = {"principal": "alice@example.com", "roles": ["Editor"]}
        added = http.post("/apis/entities/v2/workspaces/alices/members", json=member, headers=admin)
        assert added.status_code == 201, added.text

        alice = {"Authorization": f"Bearer {issuer.token()}"}
        listed = http.get("/apis/entities/v2/workspaces", headers=alice)
        assert listed.status_code == 200, listed.text
        names = {w["name"] for w in listed.json()["data"]}
        assert "alices" in names and "others" not in names
        assert http.get("/apis/entities/v2/workspaces/others", headers=alice).status_code == 404

        expired = http.get("/apis/entities/v2/workspaces",
                           headers={"Authorization": f"Bearer {issuer.token(exp=int(time.time()) - 120)}"})
        assert expired.status_code == 401 and "token expired" in expired.json()["detail"]
        foreign = http.get("/apis/entities/v2/workspaces",
                           headers={"Authorization": f"Bearer {issuer.token(aud='elsewhere')}"})
        assert foreign.status_code == 401 and "audience" in foreign.json()["detail"]
