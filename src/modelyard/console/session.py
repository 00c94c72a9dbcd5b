"""The console's session: the visitor's API key in an encrypted, http-only, SameSite=Strict cookie,
and CSRF tokens.

The cookie holds the key encrypted with the server's keyring (Fernet: authenticated, so a forged or
altered cookie is simply no session). The key is never put in a page.

CSRF: every form carries, and every script call sends in ``X-CSRF-Token``, an HMAC of the session
(keyed with the visitor's own key, which no other site can know), so a request another site makes the
browser send carries no valid token. Before sign-in, the sign-in form's token is an HMAC of a random
per-browser cookie. SameSite=Strict keeps the cookies off cross-site requests in the first place.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "modelyard_console"
PRESESSION_COOKIE = "modelyard_console_pre"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE = 12 * 3600
COOKIE_PATH = "/console"


@dataclass(frozen=True)
class Session:
    key: str
    principal: str
    default_workspace: str | None

    @property
    def csrf(self) -> str:
        return _mac(self.key, "session")


def _mac(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), f"modelyard-console-csrf:{purpose}".encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def read_session(request: Request) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    keyring = request.app.state.keyring
    try:
        raw = keyring.decrypt(token)
    except Exception:  # noqa: BLE001 - forged, or sealed with a key this server no longer has: no session
        return None
    issued, _, raw = raw.partition("\n")
    if not issued.isdigit() or time.time() - int(issued) > SESSION_MAX_AGE:
        return None
    principal, _, rest = raw.partition("\n")
    default_workspace, _, key = rest.partition("\n")
    if not key:
        return None
    return Session(key=key, principal=principal, default_workspace=default_workspace or None)


def write_session(request: Request, response: Response, key: str, principal: str,
                  default_workspace: str | None) -> None:
    token = request.app.state.keyring.encrypt(f"{int(time.time())}\n{principal}\n{default_workspace or ''}\n{key}")
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=_secure(request))
    response.delete_cookie(PRESESSION_COOKIE, path=COOKIE_PATH)


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=_secure(request))


def presession_token(request: Request) -> tuple[str, str | None]:
    """The sign-in form's CSRF token, and the random cookie value it derives from when the browser has
    none yet (the caller sets it with :func:`set_presession`)."""
    seed = request.cookies.get(PRESESSION_COOKIE)
    fresh = None
    if not seed or len(seed) < 32:
        seed = fresh = secrets.token_urlsafe(32)
    return _mac(seed, "signin"), fresh


def set_presession(request: Request, response: Response, seed: str) -> None:
    response.set_cookie(PRESESSION_COOKIE, seed, max_age=3600, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=_secure(request))


def presession_ok(request: Request, token: str | None) -> bool:
    seed = request.cookies.get(PRESESSION_COOKIE)
    return bool(seed and token and hmac.compare_digest(_mac(seed, "signin"), token))


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf, token or "")
