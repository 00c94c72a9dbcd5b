"""Model provider queries."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import ModelProvider
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, in_workspaces, run_list_query

FILTERS = {
    "name": FilterField("string", ModelProvider.name),
    "project": FilterField("string", ModelProvider.project),
    "status": FilterField("string", ModelProvider.status),
    "model_deployment_id": FilterField("string", ModelProvider.model_deployment_id),
    "description": FilterField("string", ModelProvider.description),
    "host_url": FilterField("string", ModelProvider.host_url),
    "workspace": FilterField("string", ModelProvider.workspace),
    "created_at": FilterField("timestamp", ModelProvider.created_at),
    "updated_at": FilterField("timestamp", ModelProvider.updated_at),
}
SORTS = {"name": ModelProvider.name, "created_at": ModelProvider.created_at, "updated_at": ModelProvider.updated_at}


def find(session: Session, workspace: str, name: str) -> ModelProvider | None:
    return session.scalar(select(ModelProvider).where(ModelProvider.workspace == workspace, ModelProvider.name == name))


def find_endpoint(session: Session, host_url: str) -> ModelProvider | None:
    """The provider that stands for one of our endpoints (its ``host_url`` names the endpoint)."""
    return session.scalar(select(ModelProvider).where(ModelProvider.host_url == host_url))


def get(session: Session, workspace: str, name: str) -> ModelProvider:
    row = find(session, workspace, name)
    if row is None:
        raise NotFound(f"Model provider with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: ModelProvider) -> ModelProvider:
    insert_unique(session, row, f"Model provider with workspace '{row.workspace}' and name '{row.name}' already exists")
    return row


def list_(session: Session, workspace: str | Collection[str] | None,
          query: ListQuery) -> tuple[list[ModelProvider], Pagination]:
    stmt = in_workspaces(select(ModelProvider), ModelProvider.workspace, workspace)
    return run_list_query(session, stmt, query, SORTS, ModelProvider.id)


def all_(session: Session) -> list[ModelProvider]:
    return list(session.scalars(select(ModelProvider).order_by(ModelProvider.created_at)))


def delete(session: Session, row: ModelProvider) -> None:
    session.delete(row)
    session.flush()
