"""Authentication failures: 401 with ``WWW-Authenticate: Bearer`` and a reason saying which."""

from __future__ import annotations


class AuthError(Exception):
    """The request's credentials are missing, malformed, expired, suspended, revoked or not ours."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
