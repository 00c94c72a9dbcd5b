"""Rules of access keys, role bindings and workspace members.

- A principal manages its own keys; a PlatformAdmin manages everyone's and may mint keys for another
  principal or a service account. A key never gets more scopes than the token that created it.
- A workspace's Admin manages its members and bindings (``*`` included); platform bindings
  (``PlatformAdmin``) are a PlatformAdmin's. Every workspace keeps at least one Admin.
- Every change bumps the generation counter (in the store), so every server process sees it on its
  next request.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from modelyard.auth import store
from modelyard.auth.authority import Authority
from modelyard.auth.principal import PLATFORM_ADMIN, RANK, ROLES, Access
from modelyard.auth.schemas import (
    AccessKeyCreateRequest,
    AccessKeyCreateResponse,
    AccessKeyList,
    AccessKeyMetadata,
    AccessKeyRevoked,
    AccessKeyStatusChange,
    DeleteResponse,
    RoleBinding,
    RoleBindingInput,
    WorkspaceMember,
    WorkspaceMemberInput,
    WorkspaceMemberList,
)
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.errors import Conflict, Forbidden, InvalidRequest, NotFound
from modelyard.workspaces import store as workspaces_store


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _status(row: tables.AccessKey) -> str:
    if row.status == "ACTIVE" and row.expires_at is not None and row.expires_at < utcnow():
        return "EXPIRED"
    return row.status


def key_to_wire(row: tables.AccessKey) -> AccessKeyMetadata:
    return AccessKeyMetadata(
        jti=row.jti, name=row.name, description=row.description, principal=row.principal,
        entity_type=row.entity_type, status=_status(row), issuer=row.issuer, audiences=row.audiences,  # type: ignore[arg-type]
        created_at=_utc(row.created_at), expires_at=_utc(row.expires_at),  # type: ignore[arg-type]
        default_workspace=row.default_workspace, scopes=row.scopes,
    )


def _require_keys(authority: Authority) -> None:
    if not authority.enabled:
        raise NotFound("Access keys are not enabled: authentication is off (MODELYARD_AUTH=off)")


def create_key(session: Session, authority: Authority, access: Access,
               request: AccessKeyCreateRequest) -> AccessKeyCreateResponse:
    _require_keys(authority)
    entity_type = "USER"
    principal = access.who
    if request.service_account_id is not None:
        if not access.platform_admin:
            raise Forbidden("Permission denied: keys bound to a service account need the PlatformAdmin role")
        principal, entity_type = f"service-account:{request.service_account_id}", "SERVICE_ACCOUNT"
    elif request.principal is not None and request.principal != access.who:
        if not access.platform_admin:
            raise Forbidden("Permission denied: minting a key for another principal needs the PlatformAdmin role")
        principal = request.principal
    scopes = request.scopes
    own = access.principal.scopes
    if own is not None and not access.platform_admin:
        if scopes is None:
            scopes = sorted(own)
        elif not set(scopes) <= own:
            raise InvalidRequest(f"a key cannot have scopes its creator lacks: {sorted(set(scopes) - own)}")
    if request.workspace is not None:
        workspaces_store.require(session, request.workspace)
        if principal == access.who and not access.can(request.workspace):
            raise NotFound(f"Workspace '{request.workspace}' not found")
    row, token = authority.issue(
        session, principal=principal, created_by=access.who or "local", name=request.name,
        description=request.description, expires_in=request.expires_in_seconds, scopes=scopes,
        default_workspace=request.workspace, entity_type=entity_type,
    )
    return AccessKeyCreateResponse(**key_to_wire(row).model_dump(), token=token)


def list_keys(session: Session, authority: Authority, access: Access, page: int, page_size: int) -> AccessKeyList:
    _require_keys(authority)
    rows = store.access_keys(session, principal=None if access.platform_admin else access.who,
                             offset=(page - 1) * page_size, limit=page_size + 1)
    return AccessKeyList(data=[key_to_wire(r) for r in rows[:page_size]], has_more=len(rows) > page_size)


def _own_key(session: Session, authority: Authority, access: Access, jti: str) -> tables.AccessKey:
    _require_keys(authority)
    return store.access_key(session, jti, principal=None if access.platform_admin else access.who)


def revoke_key(session: Session, authority: Authority, access: Access, jti: str) -> AccessKeyRevoked:
    row = _own_key(session, authority, access, jti)
    if row.status == "REVOKED":
        return AccessKeyRevoked(jti=jti, revoked=False)
    row.status, row.revoked_at = "REVOKED", utcnow()
    store.bump(session)
    return AccessKeyRevoked(jti=jti, revoked=True)


def set_suspended(session: Session, authority: Authority, access: Access, jti: str,
                  suspended: bool) -> AccessKeyStatusChange:
    row = _own_key(session, authority, access, jti)
    if row.status == "REVOKED":
        raise Conflict(f"Access key '{jti}' is revoked; a revoked key cannot be "
                       f"{'suspended' if suspended else 'unsuspended'}")
    wanted = "SUSPENDED" if suspended else "ACTIVE"
    changed = row.status != wanted
    if changed:
        row.status = wanted
        store.bump(session)
    return AccessKeyStatusChange(jti=jti, status=_status(row), changed=changed)  # type: ignore[arg-type]


# --- role bindings ------------------------------------------------------------------------------


def binding_to_wire(row: tables.RoleBinding) -> RoleBinding:
    return RoleBinding(id=row.id, name=row.id, principal=row.principal, workspace=row.workspace, role=row.role,
                       granted_by=row.granted_by, granted_at=_utc(row.granted_at),  # type: ignore[arg-type]
                       revoked_at=_utc(row.revoked_at))


def _manage(session: Session, access: Access, workspace: str | None) -> None:
    if workspace is None:
        if not access.platform_admin:
            raise Forbidden("Permission denied: platform role bindings need the PlatformAdmin role")
        return
    access.require(workspace, "Admin", "managing role bindings")
    workspaces_store.require(session, workspace)


def _last_admin(session: Session, workspace: str, leaving: list[tables.RoleBinding]) -> None:
    admins = [b for b in store.active_bindings(session, workspace=workspace) if b.role == "Admin"]
    if admins and all(b in leaving for b in admins):
        raise Conflict(f"Workspace '{workspace}' must keep at least one Admin: add another Admin first")


def create_binding(session: Session, access: Access, request: RoleBindingInput) -> RoleBinding:
    if (request.role == PLATFORM_ADMIN) != (request.workspace is None):
        raise InvalidRequest("PlatformAdmin is granted with no workspace; Viewer, Editor and Admin need one")
    _manage(session, access, request.workspace)
    row = store.add_binding(session, tables.RoleBinding(
        id=new_id("rb"), principal=request.principal, workspace=request.workspace, role=request.role,
        granted_by=access.who, granted_at=utcnow()))
    return binding_to_wire(row)


def visible_bindings(session: Session, access: Access) -> list[RoleBinding]:
    rows = store.active_bindings(session)
    if not access.platform_admin:
        rows = [r for r in rows if r.principal == access.who
                or (r.workspace is not None and access.rank(r.workspace) >= RANK["Admin"])]
    return [binding_to_wire(r) for r in rows]


def get_binding(session: Session, access: Access, binding_id: str) -> RoleBinding:
    row = store.binding(session, binding_id)
    if not access.platform_admin and row.principal != access.who and (
            row.workspace is None or access.rank(row.workspace) < RANK["Admin"]):
        raise NotFound(f"Role binding '{binding_id}' not found")
    return binding_to_wire(row)


def delete_binding(session: Session, access: Access, binding_id: str) -> None:
    get_binding(session, access, binding_id)
    row = store.binding(session, binding_id)
    _manage(session, access, row.workspace)
    if row.role == "Admin" and row.workspace is not None:
        _last_admin(session, row.workspace, [row])
    if row.role == PLATFORM_ADMIN:
        admins = [b for b in store.active_bindings(session) if b.role == PLATFORM_ADMIN]
        if admins == [row]:
            raise Conflict("The platform must keep at least one PlatformAdmin")
    store.revoke_bindings(session, [row], utcnow())


# --- workspace members ----------------------------------------------------------------------------


def _members(session: Session, workspace: str) -> dict[str, list[tables.RoleBinding]]:
    members: dict[str, list[tables.RoleBinding]] = {}
    for row in store.active_bindings(session, workspace=workspace):
        members.setdefault(row.principal, []).append(row)
    return members


def _member(principal: str, rows: list[tables.RoleBinding]) -> WorkspaceMember:
    first = min(rows, key=lambda r: r.granted_at)
    return WorkspaceMember(principal=principal, roles=sorted({r.role for r in rows}, key=ROLES.index),
                           granted_at=_utc(first.granted_at), granted_by=first.granted_by)


def list_members(session: Session, workspace: str) -> WorkspaceMemberList:
    workspaces_store.require(session, workspace)
    return WorkspaceMemberList(data=[_member(p, rows) for p, rows in _members(session, workspace).items()])


def _set_roles(session: Session, access: Access, workspace: str, principal: str, roles: list[str],
               current: list[tables.RoleBinding]) -> WorkspaceMember:
    leaving = [r for r in current if r.role not in roles]
    if any(r.role == "Admin" for r in leaving):
        _last_admin(session, workspace, leaving)
    if leaving:
        store.revoke_bindings(session, leaving, utcnow())
    kept = [r for r in current if r.role in roles]
    for role in roles:
        if role not in {r.role for r in kept}:
            kept.append(store.add_binding(session, tables.RoleBinding(
                id=new_id("rb"), principal=principal, workspace=workspace, role=role, granted_by=access.who,
                granted_at=utcnow())))
    return _member(principal, kept)


def add_member(session: Session, access: Access, workspace: str, request: WorkspaceMemberInput) -> WorkspaceMember:
    workspaces_store.require(session, workspace)
    current = _members(session, workspace).get(request.principal)
    if current:
        raise Conflict(f"'{request.principal}' is already a member of workspace '{workspace}' "
                       f"({', '.join(sorted(r.role for r in current))}); use PUT to change their roles")
    return _set_roles(session, access, workspace, request.principal, request.roles, [])


def update_member(session: Session, access: Access, workspace: str, principal: str,
                  roles: list[str]) -> WorkspaceMember:
    workspaces_store.require(session, workspace)
    current = _members(session, workspace).get(principal)
    if not current:
        raise NotFound(f"'{principal}' is not a member of workspace '{workspace}'")
    return _set_roles(session, access, workspace, principal, roles, current)


def remove_member(session: Session, workspace: str, principal: str) -> DeleteResponse:
    workspaces_store.require(session, workspace)
    current = _members(session, workspace).get(principal)
    if not current:
        raise NotFound(f"'{principal}' is not a member of workspace '{workspace}'")
    if any(r.role == "Admin" for r in current):
        _last_admin(session, workspace, current)
    store.revoke_bindings(session, current, utcnow())
    return DeleteResponse(id=principal, message=f"'{principal}' removed from workspace '{workspace}'")
