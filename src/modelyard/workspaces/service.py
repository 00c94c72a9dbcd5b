"""Workspace rules: ``default`` and ``system`` always exist; a workspace in use cannot be deleted."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy.orm import Session

from modelyard.auth import store as auth_store
from modelyard.auth.principal import Access
from modelyard.db import tables
from modelyard.db.engine import new_id, utcnow
from modelyard.errors import Conflict
from modelyard.listing import ListQuery, Page
from modelyard.workspaces import store
from modelyard.workspaces.schemas import CreateWorkspaceRequest, Workspace

RESERVED = frozenset({"default", "system"})


def to_wire(row: tables.Workspace) -> Workspace:
    return Workspace(
        id=row.id or "",
        name=row.name,
        description=row.description,
        created_by=row.created_by,
        updated_by=row.updated_by,
        created_at=row.created_at.replace(tzinfo=UTC),
        updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def create(session: Session, access: Access, request: CreateWorkspaceRequest) -> Workspace:
    """Create the workspace; its creator becomes its Admin (in the same transaction)."""
    now = utcnow()
    row = tables.Workspace(id=new_id("workspace"), name=request.name, description=request.description, created_at=now, updated_at=now,
                           created_by=access.who, updated_by=access.who)
    store.add(session, row)
    if access.enforced:
        auth_store.add_binding(session, tables.RoleBinding(
            id=new_id("rb"), principal=access.who, workspace=row.name, role="Admin", granted_by=access.who,
            granted_at=now))
    return to_wire(row)


def get(session: Session, name: str) -> Workspace:
    return to_wire(store.get(session, name))


def list_(session: Session, access: Access, query: ListQuery) -> Page[Workspace]:
    """The workspaces the caller has a role in (every one for a PlatformAdmin)."""
    rows, pagination = store.list_(session, query, access.workspaces())
    return Page[Workspace](
        data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo or None
    )


def delete(session: Session, name: str) -> None:
    row = store.get(session, name)
    if name in RESERVED:
        raise Conflict(f"Workspace '{name}' is built in and cannot be deleted")
    if store.holds_entities(session, name):
        raise Conflict(f"Workspace '{name}' still holds models, adapters, filesets or endpoints; delete them first")
    store.delete(session, row)
    auth_store.revoke_bindings(session, auth_store.active_bindings(session, workspace=name), utcnow())
