"""HTTP routes of the auth service: access keys, who am I, JWKS, discovery, role bindings; and the
members of a workspace (``/apis/entities/v2/workspaces/{ws}/members``, as the reference has them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from modelyard.auth import service
from modelyard.auth.authority import Authority
from modelyard.auth.deps import AccessDep
from modelyard.auth.schemas import (
    AccessKeyCreateRequest,
    AccessKeyCreateResponse,
    AccessKeyList,
    AccessKeyRevoked,
    AccessKeyStatusChange,
    Authenticated,
    DeleteResponse,
    Discovery,
    RoleBinding,
    RoleBindingInput,
    WorkspaceMember,
    WorkspaceMemberInput,
    WorkspaceMemberList,
    WorkspaceMemberUpdate,
)
from modelyard.db.session import SessionDep
from modelyard.listing import Page, Pagination

router = APIRouter(tags=["auth"])
KEYS = "/apis/auth/v2/access-keys"
BINDINGS = "/apis/auth/v2/iam/role-bindings"
MEMBERS = "/apis/entities/v2/workspaces/{workspace}/members"
PageNo = Annotated[int, Query(ge=1)]
PageSize = Annotated[int, Query(ge=1, le=100)]


def _authority(request: Request) -> Authority:
    return request.app.state.authority


@router.post(KEYS, response_model=AccessKeyCreateResponse)
def create_access_key(body: AccessKeyCreateRequest, session: SessionDep, access: AccessDep,
                      request: Request) -> AccessKeyCreateResponse:
    """Create an access key. The token is in this answer only: it is never shown again."""
    return service.create_key(session, _authority(request), access, body)


@router.get(KEYS, response_model=AccessKeyList)
def list_access_keys(session: SessionDep, access: AccessDep, request: Request, page: PageNo = 1,
                     page_size: PageSize = 50) -> AccessKeyList:
    """The caller's keys (a PlatformAdmin's: everyone's), newest first; tokens are never listed."""
    return service.list_keys(session, _authority(request), access, page, page_size)


@router.delete(KEYS + "/{jti}", response_model=AccessKeyRevoked)
def revoke_access_key(jti: str, session: SessionDep, access: AccessDep, request: Request) -> AccessKeyRevoked:
    """Revoke a key for good: refused from the next request on by this server process, and within half a
    second by every other (``GENERATION_TTL_S``)."""
    return service.revoke_key(session, _authority(request), access, jti)


@router.post(KEYS + "/{jti}/suspend", response_model=AccessKeyStatusChange)
def suspend_access_key(jti: str, session: SessionDep, access: AccessDep, request: Request) -> AccessKeyStatusChange:
    return service.set_suspended(session, _authority(request), access, jti, True)


@router.post(KEYS + "/{jti}/unsuspend", response_model=AccessKeyStatusChange)
def unsuspend_access_key(jti: str, session: SessionDep, access: AccessDep,
                         request: Request) -> AccessKeyStatusChange:
    return service.set_suspended(session, _authority(request), access, jti, False)


@router.api_route("/apis/auth/authenticate", methods=["GET", "POST"], response_model=Authenticated)
def authenticate(access: AccessDep) -> Authenticated:
    """Who the bearer token is."""
    p = access.principal
    return Authenticated(principal=p.id, email=p.id if "@" in p.id else None, scopes=sorted(p.scopes or ()),
                         jti=p.jti, token_kind="access_key" if p.jti else "oidc_access_token",
                         default_workspace=p.default_workspace, platform_admin=access.platform_admin)


@router.get("/apis/auth/jwks")
def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify this server's access keys."""
    return _authority(request).jwks()


@router.get("/apis/auth/discovery", response_model=Discovery)
def discovery(request: Request) -> Discovery:
    settings = request.app.state.settings
    oidc = None
    if settings.oidc_issuer:
        oidc = {"issuer": settings.oidc_issuer, "client_id": settings.oidc_audience or "",
                "default_scopes": "openid profile email"}
    return Discovery(auth_enabled=_authority(request).enabled, oidc=oidc)


@router.get(BINDINGS, response_model=Page[RoleBinding])
def list_role_bindings(session: SessionDep, access: AccessDep, page: PageNo = 1,
                       page_size: PageSize = 100) -> Page[RoleBinding]:
    """Active bindings the caller may see: its own, and every binding of the workspaces it administers."""
    rows = service.visible_bindings(session, access)
    chunk = rows[(page - 1) * page_size: page * page_size]
    pagination = Pagination(page=page, page_size=page_size, current_page_size=len(chunk),
                            total_pages=max(1, -(-len(rows) // page_size)), total_results=len(rows))
    return Page[RoleBinding](data=chunk, pagination=pagination, sort="granted_at", filter={})


@router.post(BINDINGS, response_model=RoleBinding)
def create_role_binding(body: RoleBindingInput, session: SessionDep, access: AccessDep) -> RoleBinding:
    return service.create_binding(session, access, body)


@router.get(BINDINGS + "/{name}", response_model=RoleBinding)
def get_role_binding(name: str, session: SessionDep, access: AccessDep) -> RoleBinding:
    return service.get_binding(session, access, name)


@router.delete(BINDINGS + "/{name}", status_code=204, response_class=Response)
def delete_role_binding(name: str, session: SessionDep, access: AccessDep) -> Response:
    service.delete_binding(session, access, name)
    return Response(status_code=204)


@router.get(MEMBERS, response_model=WorkspaceMemberList, tags=["workspaces"])
def list_members(workspace: str, session: SessionDep) -> WorkspaceMemberList:
    return service.list_members(session, workspace)


@router.post(MEMBERS, status_code=201, response_model=WorkspaceMember, tags=["workspaces"])
def add_member(workspace: str, body: WorkspaceMemberInput, session: SessionDep, access: AccessDep) -> WorkspaceMember:
    """Give a principal (``*``: every authenticated principal) roles in the workspace (Admin only)."""
    return service.add_member(session, access, workspace, body)


@router.put(MEMBERS + "/{principal_id}", response_model=WorkspaceMember, tags=["workspaces"])
def update_member(workspace: str, principal_id: str, body: WorkspaceMemberUpdate, session: SessionDep,
                  access: AccessDep) -> WorkspaceMember:
    return service.update_member(session, access, workspace, principal_id, body.roles)


@router.delete(MEMBERS + "/{principal_id}", response_model=DeleteResponse, tags=["workspaces"])
def remove_member(workspace: str, principal_id: str, session: SessionDep) -> DeleteResponse:
    return service.remove_member(session, workspace, principal_id)
