"""Virtual model queries."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import VirtualModel
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, in_workspaces, run_list_query

FILTERS = {
    "workspace": FilterField("string", VirtualModel.workspace),
    "project": FilterField("string", VirtualModel.project),
    "name": FilterField("string", VirtualModel.name),
    "default_model_entity": FilterField("string", VirtualModel.default_model_entity),
    "created_at": FilterField("timestamp", VirtualModel.created_at),
    "updated_at": FilterField("timestamp", VirtualModel.updated_at),
}
SORTS = {"name": VirtualModel.name, "created_at": VirtualModel.created_at, "updated_at": VirtualModel.updated_at}


def find(session: Session, workspace: str, name: str) -> VirtualModel | None:
    return session.scalar(select(VirtualModel).where(VirtualModel.workspace == workspace, VirtualModel.name == name))


def get(session: Session, workspace: str, name: str) -> VirtualModel:
    row = find(session, workspace, name)
    if row is None:
        raise NotFound(f"VirtualModel with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: VirtualModel) -> VirtualModel:
    insert_unique(session, row, f"VirtualModel with workspace '{row.workspace}' and name '{row.name}' already exists")
    return row


def list_(session: Session, workspace: str | Collection[str] | None, query: ListQuery, *,
          exclude_autoprovisioned: bool = False) -> tuple[list[VirtualModel], Pagination]:
    stmt = in_workspaces(select(VirtualModel), VirtualModel.workspace, workspace)
    if exclude_autoprovisioned:
        stmt = stmt.where(VirtualModel.autoprovisioned.is_(False))
    return run_list_query(session, stmt, query, SORTS, VirtualModel.id)


def in_workspace(session: Session, workspace: str) -> list[VirtualModel]:
    return list(session.scalars(select(VirtualModel).where(VirtualModel.workspace == workspace)
                                .order_by(VirtualModel.created_at)))
