"""Workspace rules: ``default`` and ``system`` always exist; a workspace in use cannot be deleted."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy.orm import Session

from modelyard.db import tables
from modelyard.db.engine import utcnow
from modelyard.errors import Conflict
from modelyard.listing import ListQuery, Page
from modelyard.workspaces import store
from modelyard.workspaces.schemas import CreateWorkspaceRequest, Workspace

RESERVED = frozenset({"default", "system"})


def to_wire(row: tables.Workspace) -> Workspace:
    return Workspace(
        name=row.name,
        description=row.description,
        created_at=row.created_at.replace(tzinfo=UTC),
        updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def create(session: Session, request: CreateWorkspaceRequest) -> Workspace:
    now = utcnow()
    row = tables.Workspace(name=request.name, description=request.description, created_at=now, updated_at=now)
    return to_wire(store.add(session, row))


def get(session: Session, name: str) -> Workspace:
    return to_wire(store.get(session, name))


def list_(session: Session, query: ListQuery) -> Page[Workspace]:
    rows, pagination = store.list_(session, query)
    return Page[Workspace](
        data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo
    )


def delete(session: Session, name: str) -> None:
    row = store.get(session, name)
    if name in RESERVED:
        raise Conflict(f"Workspace '{name}' is built in and cannot be deleted")
    if store.holds_entities(session, name):
        raise Conflict(f"Workspace '{name}' still holds models, adapters, filesets or endpoints; delete them first")
    store.delete(session, row)
