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


def get(session: Session, workspace: str, name: str) -> Adapter:
    row = session.scalar(select(Adapter).where(Adapter.workspace == workspace, Adapter.name == name))
    if row is None:
        raise NotFound(f"Adapter with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: Adapter) -> Adapter:
    insert_unique(session, row, f"Adapter with workspace '{row.workspace}' and name '{row.name}' already exists")
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
