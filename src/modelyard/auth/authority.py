"""The server's authority over identity: it signs access keys and turns a request's token into an
:class:`~modelyard.auth.principal.Access`. One per app (``app.state.authority``); nothing else keeps
auth state.

Cost per request, measured by ``bench/gateway_overhead.py --auth``: a token seen before is not verified
again (verified claims are cached by token); key states and role bindings are held in memory and
reloaded only when the database's generation counter (``auth_generation``) moved, which every change
to keys or bindings bumps in its own transaction. That counter is read at most every
:data:`GENERATION_TTL_S` seconds, and at once after this process committed a change: a request with a
known token touches no database, a change made through this process is in force before its answer
goes out, and one made through another process within half a second.

Access keys are ES256 JWTs (PyJWT over ``cryptography``) carrying ``jti``, ``sub`` (the principal),
``ws`` (the default workspace), ``scope`` and an optional ``exp``; the private half of each signing
key is stored encrypted with the server's keyring, the public half is served at ``/apis/auth/jwks``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelyard.auth import store
from modelyard.auth.crypto import Keyring
from modelyard.auth.errors import AuthError
from modelyard.auth.principal import PLATFORM_ADMIN, RANK, WILDCARD, Access, Principal
from modelyard.db.engine import Database, new_id, utcnow
from modelyard.db.tables import AccessKey, RoleBinding, SigningKey

log = logging.getLogger("modelyard.auth")

ISSUER = "modelyard"
AUDIENCE = "modelyard"
ALGORITHM = "ES256"
TOKEN_CACHE_SIZE = 10_000
GENERATION_TTL_S = 0.5
"""How long a read of the generation counter is trusted: requests are authenticated from memory in
between, and a key revoked or a role removed through another server process is in force here within
this time (a change made through this process is in force at once)."""
BOOTSTRAP_PRINCIPAL = "admin"


@dataclass(frozen=True)
class _Claims:
    principal: str
    jti: str | None
    expires: float | None
    scopes: frozenset[str] | None
    default_workspace: str | None
    entity_type: str


@dataclass
class _Snapshot:
    """Key states and role bindings as of one generation."""

    generation: int = -1
    keys: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)  # principal -> workspace -> rank
    wildcard: dict[str, int] = field(default_factory=dict)
    platform_admins: frozenset[str] = frozenset()
    access: dict[Principal, Access] = field(default_factory=dict)


class _GenerationReader:
    """Reads the generation counter on one connection kept for it: a pool checkout, a transaction and
    the ORM would cost several times the query itself, on every request. The connection runs in
    autocommit, so each read sees the latest commit. Should it fail (a restarted database), it is
    dropped and the read is made once on a pooled connection, whose errors are SQLAlchemy's (503)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None
        self._lock = threading.Lock()

    def read(self) -> int:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self.db.engine.raw_connection()
                    if self.db.backend == "postgresql":
                        self._conn.driver_connection.autocommit = True
                cursor = self._conn.cursor()
                try:
                    cursor.execute(store.GENERATION_SQL)
                    return int(cursor.fetchone()[0])
                finally:
                    cursor.close()
            except Exception:  # noqa: BLE001 - any failure: drop the connection, read the pooled way
                self.close_locked()
        with self.db.engine.connect() as conn:
            return store.generation(conn)

    def close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:  # noqa: BLE001 - already broken
                log.debug("generation connection could not be closed cleanly")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()


class Authority:
    def __init__(self, db: Database, keyring: Keyring, *, enabled: bool = True, oidc: Any = None) -> None:
        self.db = db
        self.inline = db.backend == "sqlite"
        """Authenticate on the event loop: a local SQLite read takes microseconds and cannot hang on a
        network; with PostgreSQL the middleware hands it to a worker thread."""
        self._generation = _GenerationReader(db)
        self.keyring = keyring
        self.enabled = enabled
        self.oidc = oidc  # an OidcVerifier, or None
        self._signers: dict[str, Any] = {}  # kid -> private key
        self._verifiers: dict[str, Any] = {}  # kid -> public key
        self._tokens: OrderedDict[str, _Claims] = OrderedDict()
        self._snapshot = _Snapshot()
        self._fresh_until = 0.0  # monotonic time until which the snapshot's generation is trusted
        self._seen_local = -1  # store.local_changes when the generation was last read
        self._lock = threading.Lock()

    # --- signing keys -----------------------------------------------------------------------------

    def load_signing_keys(self) -> None:
        """Load every signing key; create the first one on a new database."""
        with self.db.session(write=True) as session:
            rows = store.signing_keys(session)
            if not rows:
                rows = [self._new_signing_key(session)]
            for row in rows:
                self._remember(row)

    def _new_signing_key(self, session: Any) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        kid = uuid.uuid4().hex
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid=kid, alg=ALGORITHM, use="sig")
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        row = SigningKey(kid=kid, algorithm=ALGORITHM, private_key=self.keyring.encrypt(pem), public_jwk=jwk,
                         created_at=utcnow())
        store.add_signing_key(session, row)
        return row

    def _remember(self, row: SigningKey) -> None:
        private = serialization.load_pem_private_key(self.keyring.decrypt(row.private_key).encode(), password=None)
        self._signers[row.kid] = private
        self._verifiers[row.kid] = private.public_key()

    def jwks(self) -> dict[str, Any]:
        with self.db.session() as session:
            return {"keys": [row.public_jwk for row in store.signing_keys(session)]}

    def _verifier(self, kid: str) -> Any:
        key = self._verifiers.get(kid)
        if key is None:  # signed by a key another server process created after we loaded ours
            with self.db.session() as session:
                for row in store.signing_keys(session):
                    if row.kid not in self._verifiers:
                        self._remember(row)
            key = self._verifiers.get(kid)
        return key

    # --- issuing ----------------------------------------------------------------------------------

    def issue(self, session: Any, *, principal: str, created_by: str, name: str | None = None,
              description: str | None = None, expires_in: int | None = None, scopes: list[str] | None = None,
              default_workspace: str | None = None, entity_type: str = "USER") -> tuple[AccessKey, str]:
        """Record a new access key in ``session`` and return it with its token (shown once)."""
        kid = next(reversed(self._signers))
        now = utcnow()
        jti = new_id("key")
        expires_at = now + timedelta(seconds=expires_in) if expires_in else None
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": principal, "jti": jti,
                                  "iat": int(now.replace(tzinfo=UTC).timestamp()), "ety": entity_type}
        if expires_at is not None:
            claims["exp"] = int(expires_at.replace(tzinfo=UTC).timestamp())
        if scopes is not None:
            claims["scope"] = " ".join(scopes)
        if default_workspace:
            claims["ws"] = default_workspace
        token = jwt.encode(claims, self._signers[kid], algorithm=ALGORITHM, headers={"kid": kid})
        row = AccessKey(jti=jti, name=name, description=description, principal=principal, entity_type=entity_type,
                        default_workspace=default_workspace, scopes=scopes, status="ACTIVE", issuer=ISSUER,
                        audiences=[AUDIENCE], created_by=created_by, created_at=now, expires_at=expires_at)
        store.add_access_key(session, row)
        return row, token

    def bootstrap(self) -> str | None:
        """On a database with no PlatformAdmin: bind ``admin`` to it and return a key for it (the
        caller writes it to the credentials file). ``None`` when an admin exists already."""
        with self.db.session(write=True) as session:
            if store.platform_admin_exists(session):
                return None
            store.add_binding(session, RoleBinding(
                id=new_id("rb"), principal=BOOTSTRAP_PRINCIPAL, workspace=None, role=PLATFORM_ADMIN,
                granted_by="system", granted_at=utcnow()))
            _, token = self.issue(session, principal=BOOTSTRAP_PRINCIPAL, created_by="system",
                                  name="bootstrap", description="created on first start; see MODELYARD_HOME/credentials")
            return token

    # --- authenticating ---------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Access:
        """The caller's access for a bearer token (``None``: no token sent). Blocking: call it from a
        worker thread. Raises :class:`AuthError` saying why a token is refused."""
        if not self.enabled:
            return Access.local()
        if not token:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <access key>'")
        snapshot = self._current()
        claims = self._claims(token)
        if claims.expires is not None and claims.expires < datetime.now(UTC).timestamp():
            raise AuthError("token expired")
        if claims.jti is not None:
            state = snapshot.keys.get(claims.jti)
            if state is None:
                raise AuthError("unknown access key")
            status, expires_at = state
            if status == "REVOKED":
                raise AuthError("access key revoked")
            if status == "SUSPENDED":
                raise AuthError("access key suspended")
            if expires_at is not None and expires_at < utcnow():
                raise AuthError("access key expired")
        principal = Principal(claims.principal, claims.entity_type, claims.jti,  # type: ignore[arg-type]
                              claims.scopes, claims.default_workspace)
        access = snapshot.access.get(principal)
        if access is None:
            ranks = dict(snapshot.wildcard)
            for ws, rank in snapshot.ranks.get(principal.id, {}).items():
                ranks[ws] = max(rank, ranks.get(ws, 0))
            access = Access(principal, platform_admin=principal.id in snapshot.platform_admins, ranks=ranks)
            snapshot.access[principal] = access
        return access

    def _claims(self, token: str) -> _Claims:
        cached = self._tokens.get(token)
        if cached is not None:
            return cached
        if self.oidc is not None and self.oidc.owns(token):
            identity = self.oidc.verify(token)
            claims = _Claims(identity.principal, None, getattr(identity, "expires", None), identity.scopes, None, "USER")
        else:
            claims = self._verify(token)
        with self._lock:
            self._tokens[token] = claims
            if len(self._tokens) > TOKEN_CACHE_SIZE:
                self._tokens.popitem(last=False)
        return claims

    def _verify(self, token: str) -> _Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token: not a JSON Web Token") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError("token is not signed by this server (unexpected algorithm)")
        key = self._verifier(str(header.get("kid")))
        if key is None:
            raise AuthError("token is not signed by this server (unknown key id)")
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["sub", "jti", "iat"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        scope = claims.get("scope")
        return _Claims(
            principal=str(claims["sub"]), jti=str(claims["jti"]), expires=claims.get("exp"),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else None,
            default_workspace=claims.get("ws"), entity_type=str(claims.get("ety", "USER")),
        )

    def from_memory(self, token: str | None) -> bool:
        """Whether :meth:`authenticate` can answer for ``token`` without the database (nor a signature
        check): its snapshot is fresh and the token was verified before. Then it is safe on the event loop."""
        return (token is not None and token in self._tokens and self._seen_local == store.local_changes
                and time.monotonic() < self._fresh_until)

    def _current(self) -> _Snapshot:
        """The snapshot for the database's current generation (reloaded when it moved). The generation
        is read at most every :data:`GENERATION_TTL_S` seconds, and at once after a change made by
        this process (``store.local_changes``)."""
        snapshot = self._snapshot
        now = time.monotonic()
        if now < self._fresh_until and self._seen_local == store.local_changes and snapshot.generation >= 0:
            return snapshot
        seen = store.local_changes
        generation = self._generation.read()
        self._seen_local, self._fresh_until = seen, now + GENERATION_TTL_S
        if generation == snapshot.generation:
            return snapshot
        with self._lock, self.db.engine.connect() as conn:
            if self._snapshot.generation == generation:
                return self._snapshot
            self._snapshot = self._load(conn, generation)
            return self._snapshot

    def _load(self, conn: Any, generation: int) -> _Snapshot:
        snapshot = _Snapshot(generation=generation, keys=store.key_states(conn))
        admins = set()
        for principal, workspace, role in store.binding_triples(conn):
            if role == PLATFORM_ADMIN:
                admins.add(principal)
                continue
            if workspace is None or role not in RANK:
                continue
            target = snapshot.wildcard if principal == WILDCARD else snapshot.ranks.setdefault(principal, {})
            target[workspace] = max(RANK[role], target.get(workspace, 0))
        snapshot.platform_admins = frozenset(admins)
        return snapshot

    def close(self) -> None:
        self._generation.close()

    def invalidate(self) -> None:
        """Forget the snapshot (after this process changed keys or bindings, before it answers)."""
        self._snapshot = _Snapshot()
        self._fresh_until = 0.0
