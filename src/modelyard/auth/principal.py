"""Who is calling and what they may do: plain values, no FastAPI or database.

A request is made by a :class:`Principal` (from an access key, an OIDC token, or the local mode when
auth is off). :class:`Access` is what the principal may do, computed once per request from the role
bindings the server has loaded: its rank in every workspace (the highest of its own bindings and the
``*`` bindings), whether it is a PlatformAdmin, and the scopes its token narrows it to.

Roles and scopes are the reference's: Viewer (list, read, run inference) < Editor (create, update,
delete) < Admin (members, wildcard shares) < PlatformAdmin (every workspace, bypasses scopes). A token
with scopes (``models:read``, ``files:write``, ``platform:read``, ...) passes a route only when one of
the route's scopes is among them; a token without scopes is not narrowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from modelyard.errors import Forbidden, NotFound

ROLES = ("Viewer", "Editor", "Admin")
PLATFORM_ADMIN = "PlatformAdmin"
RANK = {"Viewer": 1, "Editor": 2, "Admin": 3, PLATFORM_ADMIN: 4}
WILDCARD = "*"

SCOPE_GROUPS = ("models", "files", "inference", "endpoints", "secrets", "iam", "audit")
SCOPES = frozenset(f"{group}:{mode}" for group in (*SCOPE_GROUPS, "platform") for mode in ("read", "write"))

Role = Literal["Viewer", "Editor", "Admin"]
EntityType = Literal["USER", "SERVICE_ACCOUNT"]


@dataclass(frozen=True)
class Principal:
    id: str
    """``alice@example.com``, ``service-account:ci``; empty in the local mode (auth off)."""
    entity_type: EntityType = "USER"
    jti: str | None = None
    """The access key the request was made with (``None``: OIDC token or local mode)."""
    scopes: frozenset[str] | None = None
    """What the token narrows the principal to; ``None``: not narrowed."""
    default_workspace: str | None = None
    """The workspace OpenAI- and Together-style calls use when no ``X-Modelyard-Workspace`` is sent."""


@dataclass(frozen=True)
class Access:
    principal: Principal
    platform_admin: bool = False
    ranks: Mapping[str, int] = field(default_factory=dict)
    """workspace -> rank (1 Viewer, 2 Editor, 3 Admin), wildcard bindings included."""
    enforced: bool = True
    """``False`` in the local mode: everything is allowed and nothing is filtered."""

    @classmethod
    def local(cls) -> Access:
        return cls(Principal(""), platform_admin=True, enforced=False)

    @property
    def who(self) -> str:
        return self.principal.id

    def rank(self, workspace: str) -> int:
        if self.platform_admin:
            return RANK[PLATFORM_ADMIN]
        return self.ranks.get(workspace, 0)

    def role(self, workspace: str) -> str | None:
        rank = self.rank(workspace)
        return next((name for name, r in RANK.items() if r == rank), None)

    def can(self, workspace: str, role: str = "Viewer") -> bool:
        return self.rank(workspace) >= RANK[role]

    def workspaces(self) -> frozenset[str] | None:
        """The workspaces the principal can see; ``None`` means every one (PlatformAdmin, local mode)."""
        if self.platform_admin:
            return None
        return frozenset(ws for ws, rank in self.ranks.items() if rank > 0)

    def require(self, workspace: str, role: str, action: str) -> None:
        """Raise unless the principal has ``role`` in ``workspace``: a workspace it cannot see at all is
        404 (its name does not leak), one it can see but not change is 403 naming what is missing."""
        rank = self.rank(workspace)
        if rank == 0:
            raise NotFound(f"Workspace '{workspace}' not found")
        if rank < RANK[role]:
            raise Forbidden(
                f"Permission denied: {action} needs the {role} role in workspace '{workspace}'; "
                f"'{self.who}' is {self.role(workspace)} there"
            )

    def scope_allows(self, group: str, write: bool) -> bool:
        scopes = self.principal.scopes
        if scopes is None or self.platform_admin:
            return True
        mode = "write" if write else "read"
        return f"{group}:{mode}" in scopes or f"platform:{mode}" in scopes

    def require_scope(self, group: str, write: bool) -> None:
        if not self.scope_allows(group, write):
            mode = "write" if write else "read"
            raise Forbidden(
                f"Permission denied: this key's scopes do not include '{group}:{mode}' (or 'platform:{mode}'), "
                "which this request needs"
            )
