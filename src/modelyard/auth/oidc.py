"""Bearer tokens issued by an outside OpenID Connect provider (``MODELYARD_OIDC_ISSUER``).

The issuer's signing keys come from its discovery document (``{issuer}/.well-known/openid-configuration``
names the ``jwks_uri``) and are kept for ``cache_seconds``. A token signed with a key id the cache does
not hold makes the verifier fetch the keys again (the issuer rotated them), but at most once every
:data:`REFETCH_INTERVAL_S` seconds, so a stream of bad tokens cannot make the server hammer the issuer.

Only asymmetric algorithms are accepted (RS256, ES256, EdDSA): never ``none``, never an HMAC that a
public key could be passed off as the secret of. Signatures are PyJWT's; this module only picks the key,
checks the claims (``iss``, ``aud``, ``exp``, ``nbf``, with :data:`LEEWAY_S` of clock skew) and names
what failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

log = logging.getLogger("modelyard.auth.oidc")

ALGORITHMS = ("RS256", "ES256", "EdDSA")
LEEWAY_S = 30
REFETCH_INTERVAL_S = 30.0
"""The least time between two fetches of the issuer's keys (a failed fetch counts)."""
FETCH_TIMEOUT_S = 5.0
MAX_PRINCIPAL_LENGTH = 255
KEYS_UNAVAILABLE = "the OIDC issuer's keys could not be fetched"

try:  # the shared error of the auth package, once it exists
    from modelyard.auth.errors import AuthError  # type: ignore[import-not-found,unused-ignore]
except ImportError:

    class AuthError(Exception):  # type: ignore[no-redef]
        """A token that does not authenticate anyone; ``reason`` says why, in words a client can act on."""

        def __init__(self, reason: str) -> None:
            super().__init__(reason)
            self.reason = reason


@dataclass(frozen=True)
class OidcIdentity:
    principal: str
    """The value of the principal claim (``email`` by default)."""
    scopes: frozenset[str] | None = None
    """The token's ``scope``/``scp`` entries that look like ``group:mode``; ``None``: not narrowed."""
    expires: float | None = None
    """The token's ``exp`` (seconds since the epoch): a cache of verified tokens must drop it then."""


def _scopes(claims: Mapping[str, Any]) -> frozenset[str] | None:
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        items = raw.split()
    elif isinstance(raw, list):
        items = [item for item in raw if isinstance(item, str)]
    else:
        items = []
    scopes = frozenset(item for item in items if ":" in item)
    return scopes or None


_Key = tuple[jwt.PyJWK, Any]
"""A published key and the algorithm its ``alg`` member pins it to (``None``: not pinned)."""


class OidcVerifier:
    def __init__(
        self, issuer: str, audience: str, principal_claim: str = "email", *, http: httpx.Client | None = None,
        cache_seconds: float = 300, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.principal_claim = principal_claim
        self.cache_seconds = cache_seconds
        self._http = http or httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, _Key] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None

    # -- the cheap check ------------------------------------------------------------------------

    def owns(self, token: str) -> bool:
        """Whether ``token`` claims to come from this issuer (nothing is verified: a routing hint only)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return isinstance(claims, dict) and claims.get("iss") == self.issuer

    # -- verification -----------------------------------------------------------------------------

    def verify(self, token: str) -> OidcIdentity:
        """The identity ``token`` proves, or :class:`AuthError` naming what is wrong with it. May block on
        the network (at most :data:`FETCH_TIMEOUT_S` per fetch): call it off the event loop."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("token is malformed (not a JWT)") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise AuthError(f"token algorithm '{str(algorithm)[:20]}' is not accepted (use one of {', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("token 'kid' header is not a string")
        key, declared = self._key(kid)
        if declared is not None and declared != algorithm:
            raise AuthError(f"token algorithm '{algorithm}' is not its signing key's ('{str(declared)[:20]}')")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
                leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet (its 'nbf' or 'iat' is in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"token audience is not '{self.audience}'") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"token issuer is not '{self.issuer}'") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no '{exc.claim}' claim") from None
        except jwt.DecodeError:
            raise AuthError("token is malformed") from None
        except jwt.PyJWTError as exc:  # a key of the wrong type for the algorithm, a bad claim type, ...
            raise AuthError(f"token is invalid: {str(exc)[:200]}") from None
        expires = claims.get("exp")
        return OidcIdentity(self._principal(claims), _scopes(claims),
                            float(expires) if isinstance(expires, (int, float)) else None)

    def _principal(self, claims: Mapping[str, Any]) -> str:
        claim = self.principal_claim
        value = claims.get(claim)
        if not isinstance(value, str) or not value.strip():
            raise AuthError(f"principal claim '{claim}' missing")
        if len(value) > MAX_PRINCIPAL_LENGTH:
            raise AuthError(f"principal claim '{claim}' is longer than {MAX_PRINCIPAL_LENGTH} characters")
        if claim == "email" and claims.get("email_verified") is False:
            raise AuthError("the token's email is not verified by the issuer")
        return value

    # -- keys -------------------------------------------------------------------------------------

    def _key(self, kid: str | None) -> _Key:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self.cache_seconds:
                self._refresh(now, stale_ok=self._keys is not None)
            assert self._keys is not None
            key = self._pick(kid)
            if key is None and self._may_fetch(now):  # a key the cache does not know: rotated at the issuer?
                self._refresh(now, stale_ok=True)
                key = self._pick(kid)
        if key is None:
            if kid is None:
                raise AuthError("token has no 'kid' header and the issuer publishes several keys")
            raise AuthError(f"token signing key '{kid[:100]}' is not one of the issuer's keys")
        return key

    def _pick(self, kid: str | None) -> _Key | None:
        assert self._keys is not None
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= REFETCH_INTERVAL_S

    def _refresh(self, now: float, *, stale_ok: bool) -> None:
        """Fetch the issuer's keys (rate-limited); with ``stale_ok``, a failure keeps the keys held."""
        if not self._may_fetch(now):
            if self._keys is None:
                raise AuthError(KEYS_UNAVAILABLE)
            return
        self._attempted_at = now
        try:
            keys = self._fetch()
        except AuthError:
            if stale_ok and self._keys is not None:
                return
            raise
        self._keys = keys
        self._fetched_at = now

    def _fetch(self) -> dict[str | None, _Key]:
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = self._http.get(discovery_url)
            response.raise_for_status()
            jwks_uri = response.json()["jwks_uri"]
            if not isinstance(jwks_uri, str):
                raise TypeError("jwks_uri is not a string")
            response = self._http.get(jwks_uri)
            response.raise_for_status()
            document = response.json()
            keys: dict[str | None, _Key] = {}
            for entry in document["keys"]:
                if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                    continue  # an encryption key, or a shared secret (never published by a sane issuer)
                try:
                    key = jwt.PyJWK(entry)
                except jwt.PyJWTError:  # a key type or algorithm this server does not use
                    continue
                keys[entry.get("kid")] = (key, entry.get("alg"))
            if not keys:
                raise ValueError("the key set holds no usable signing key")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("OIDC keys could not be fetched", extra={"issuer": self.issuer, "error": str(exc)[:200]})
            raise AuthError(KEYS_UNAVAILABLE) from None
        return keys

    def close(self) -> None:
        self._http.close()
