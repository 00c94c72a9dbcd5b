"""Wire models of the auth service (the reference's shapes, plus ``default_workspace`` and ``scopes``
on access keys, and ``principal`` for a PlatformAdmin minting a key for someone else)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from modelyard.auth.principal import PLATFORM_ADMIN, ROLES, SCOPES
from modelyard.workspaces.schemas import EntityName, RequestModel, WireModel

PrincipalId = Annotated[str, Field(min_length=1, max_length=240, pattern=r"^[^\s/]+$")]


def _check_scopes(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; valid scopes: {sorted(SCOPES)}")
    return sorted(set(value))


def _check_roles(value: list[str]) -> list[str]:
    unknown = sorted(set(value) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; workspace roles are {list(ROLES)}")
    if not value:
        raise ValueError("give at least one role")
    return sorted(set(value), key=ROLES.index)


def _check_role(value: str) -> str:
    if value not in (*ROLES, PLATFORM_ADMIN):
        raise ValueError(f"unknown role '{value}'; roles are {[*ROLES, PLATFORM_ADMIN]}")
    return value


Scopes = Annotated[list[str] | None, AfterValidator(_check_scopes)]
Roles = Annotated[list[str], AfterValidator(_check_roles)]


class AccessKeyCreateRequest(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    description: Annotated[str, Field(max_length=1024)] | None = None
    expires_in_seconds: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None
    service_account_id: Annotated[str, Field(min_length=1, max_length=240,
                                             pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._+/-]*$")] | None = None
    principal: PrincipalId | None = None
    """Mint the key for another principal (PlatformAdmin only); default: the caller."""
    workspace: EntityName | None = None
    """The workspace OpenAI- and Together-style calls with this key act in (``X-Modelyard-Workspace``
    overrides it per request)."""
    scopes: Scopes = None
    """Narrow the key to these scopes (default: the creating token's own, i.e. not narrowed)."""


class AccessKeyMetadata(WireModel):
    jti: str
    name: str | None = None
    description: str | None = None
    principal: str
    entity_type: Literal["USER", "SERVICE_ACCOUNT"] = "USER"
    status: Literal["ACTIVE", "EXPIRED", "REVOKED", "SUSPENDED"]
    issuer: str
    audiences: list[str]
    created_at: datetime
    expires_at: datetime | None = None
    default_workspace: str | None = None
    scopes: list[str] | None = None


class AccessKeyCreateResponse(AccessKeyMetadata):
    token: str
    token_type: Literal["Bearer"] = "Bearer"


class AccessKeyList(WireModel):
    data: list[AccessKeyMetadata]
    has_more: bool = False


class AccessKeyRevoked(WireModel):
    jti: str
    revoked: bool


class AccessKeyStatusChange(WireModel):
    jti: str
    status: Literal["ACTIVE", "EXPIRED", "SUSPENDED"]
    changed: bool


class Authenticated(WireModel):
    principal: str
    email: str | None = None
    groups: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    jti: str | None = None
    token_kind: Literal["access_key", "oidc_access_token"]
    default_workspace: str | None = None
    platform_admin: bool = False


class Discovery(WireModel):
    auth_enabled: bool
    oidc: dict[str, Any] | None = None


class RoleBindingInput(RequestModel):
    principal: PrincipalId
    workspace: EntityName | None = None
    role: Annotated[str, AfterValidator(_check_role)]


class RoleBinding(WireModel):
    id: str
    name: str
    principal: str
    workspace: str | None
    role: str
    granted_by: str
    granted_at: datetime
    revoked_at: datetime | None = None


class WorkspaceMemberInput(RequestModel):
    principal: PrincipalId
    roles: Roles = Field(default_factory=lambda: ["Editor"])


class WorkspaceMemberUpdate(RequestModel):
    roles: Roles


class WorkspaceMember(WireModel):
    principal: str
    roles: list[str]
    granted_at: datetime | None = None
    granted_by: str | None = None


class WorkspaceMemberList(WireModel):
    data: list[WorkspaceMember]


class DeleteResponse(WireModel):
    message: str = "Resource deleted successfully."
    id: str
