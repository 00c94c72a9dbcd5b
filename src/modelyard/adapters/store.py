"""Adapter queries. Names are unique per workspace across all base models (a database constraint)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, in_workspaces, run_list_query

FILTERS = {
    "name": FilterField("string", Adapter.name),
    "model": FilterField("string", Adapter.model),
    "description": FilterField("string", Adapter.description),
    "fileset": FilterField("string", Adapter.fileset),
    "finetuning_type": FilterField("string", Adapter.finetuning_type),
    "enabled": FilterField("boolean", Adapter.enabled),
    "created_at": FilterField("timestamp", Adapter.created_at),
    "updated_at": FilterField("timestamp", Adapter.updated_at),
}
SORTS = {"name": Adapter.name, "created_at": Adapter.created_at, "updated_at": Adapter.updated_at}


def find(session: Session, workspace: str, name: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.workspace == workspace, Adapter.name == name))


def get(session: Session, workspace: str, name: str) -> Adapter:
    row = find(session, workspace, name)
    if row is None:
        raise NotFound(f"Adapter '{name}' not found in workspace '{workspace}'")
    return row


def add(session: Session, row: Adapter, conflict: str | None = None) -> Adapter:
    """Insert; a name taken in the workspace (by an adapter of any base model) is 409 ``conflict``."""
    insert_unique(session, row, conflict or f"Adapter with name '{row.name}' already exists in workspace '{row.workspace}'")
    return row


def list_(
    session: Session, workspace: str | Collection[str] | None, query: ListQuery
) -> tuple[list[Adapter], Pagination]:
    """One workspace's, several workspaces' (a ``-`` list: those the caller can read) or all."""
    stmt = in_workspaces(select(Adapter), Adapter.workspace, workspace)
    return run_list_query(session, stmt, query, SORTS, Adapter.id)


def delete(session: Session, row: Adapter) -> None:
    session.delete(row)
    session.flush()
