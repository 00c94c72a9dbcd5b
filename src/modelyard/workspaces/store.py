"""Workspace queries."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter, Endpoint, Fileset, Model, Secret, Workspace
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, run_list_query

FILTERS = {
    "name": FilterField("string", Workspace.name),
    "description": FilterField("string", Workspace.description),
    "created_at": FilterField("timestamp", Workspace.created_at),
    "updated_at": FilterField("timestamp", Workspace.updated_at),
}
SORTS = {"name": Workspace.name, "created_at": Workspace.created_at, "updated_at": Workspace.updated_at}


def get(session: Session, name: str) -> Workspace:
    row = session.get(Workspace, name)
    if row is None:
        raise NotFound(f"Workspace '{name}' not found")
    return row


def require(session: Session, name: str) -> None:
    """404 for any route under a workspace that does not exist."""
    if session.scalar(select(exists().where(Workspace.name == name))) is not True:
        raise NotFound(f"Workspace '{name}' not found")


def add(session: Session, row: Workspace) -> Workspace:
    insert_unique(session, row, f"Workspace '{row.name}' already exists")
    return row


def list_(session: Session, query: ListQuery, only: frozenset[str] | None = None) -> tuple[list[Workspace], Pagination]:
    """``only``: the workspaces to consider (``None``: all)."""
    stmt = select(Workspace) if only is None else select(Workspace).where(Workspace.name.in_(sorted(only)))
    return run_list_query(session, stmt, query, SORTS, Workspace.name)


def holds_entities(session: Session, name: str) -> bool:
    """Whether anything still lives in the workspace: models, adapters, filesets, endpoints or secrets."""
    return any(
        session.scalar(select(exists().where(table.workspace == name)))
        for table in (Model, Adapter, Fileset, Endpoint, Secret)
    )


def delete(session: Session, row: Workspace) -> None:
    session.delete(row)
    session.flush()
