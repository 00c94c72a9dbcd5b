"""Wire models of the auth, members and secrets APIs, as the SDK reads them.

Kept in the SDK (pydantic only) and lenient: fields the server adds are kept (``extra="allow"``) and
fields it leaves out default to None, so a newer server does not break an older client.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class AccessKey(_Wire):
    """An access key as listed (its token is never shown again after creation)."""

    jti: str
    name: str | None = None
    description: str | None = None
    principal: str | None = None
    entity_type: str | None = None
    status: str | None = None
    issuer: str | None = None
    audiences: list[str] | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    default_workspace: str | None = None
    scopes: list[str] | None = None


class AccessKeyCreated(AccessKey):
    """The answer to creating a key: the only time its token is shown."""

    token: str
    token_type: str | None = "Bearer"


class AccessKeyList(_Wire):
    data: list[AccessKey] = Field(default_factory=list)
    has_more: bool = False


class AccessKeyRevoked(_Wire):
    jti: str
    revoked: bool


class AccessKeyStatus(_Wire):
    """The answer to suspend / unsuspend: ``changed`` is False when the key already had that status."""

    jti: str
    status: str
    changed: bool


class Member(_Wire):
    """A principal's roles in one workspace."""

    principal: str
    roles: list[str] = Field(default_factory=list)
    granted_at: datetime | None = None
    granted_by: str | None = None


class MemberList(_Wire):
    data: list[Member] = Field(default_factory=list)


class Deleted(_Wire):
    id: str | None = None
    message: str | None = None


class Secret(_Wire):
    """A secret's metadata (its value only comes from ``secrets.access``)."""

    name: str
    workspace: str | None = None
    description: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SecretValue(_Wire):
    name: str
    workspace: str | None = None
    value: str

    def __repr__(self) -> str:  # the value stays out of logs and tracebacks
        return f"SecretValue(name={self.name!r}, workspace={self.workspace!r}, value='***')"

    __str__ = __repr__


class WhoAmI(_Wire):
    """Who the server takes the caller to be."""

    principal: str
    email: str | None = None
    groups: list[str] = Field(default_factory=list)
    scopes: list[str] | None = None
    jti: str | None = None
    token_kind: str | None = None
    default_workspace: str | None = None
    platform_admin: bool = False


__all__ = [
    "AccessKey",
    "AccessKeyCreated",
    "AccessKeyList",
    "AccessKeyRevoked",
    "AccessKeyStatus",
    "Deleted",
    "Member",
    "MemberList",
    "Secret",
    "SecretValue",
    "WhoAmI",
]
