"""Model queries. Uniqueness of (workspace, name) is the database's job: a duplicate insert
fails in ``flush`` and becomes :class:`AlreadyExists`, so there is no read-then-write race."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import delete as sql_delete
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter, Model
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, in_workspaces, run_list_query

_HAS_ADAPTERS = exists().where(Adapter.model_id == Model.id)

FILTERS = {
    "name": FilterField("string", Model.name),
    "project": FilterField("string", Model.project),
    "base_model": FilterField("string", Model.base_model),
    "finetuning_type": FilterField("string", Model.finetuning_type),
    "description": FilterField("string", Model.description),
    "fileset": FilterField("string", Model.fileset),
    "adapters": FilterField("boolean", predicate=lambda has: _HAS_ADAPTERS if has else ~_HAS_ADAPTERS),
    "created_at": FilterField("timestamp", Model.created_at),
    "updated_at": FilterField("timestamp", Model.updated_at),
}
SORTS = {"name": Model.name, "created_at": Model.created_at, "updated_at": Model.updated_at}


def find(session: Session, workspace: str, name: str) -> Model | None:
    return session.scalar(select(Model).where(Model.workspace == workspace, Model.name == name))


def get(session: Session, workspace: str, name: str) -> Model:
    row = find(session, workspace, name)
    if row is None:
        raise NotFound(f"Model with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: Model) -> Model:
    insert_unique(session, row, f"Model with workspace '{row.workspace}' and name '{row.name}' already exists")
    return row


def list_(
    session: Session, workspace: str | Collection[str] | None, query: ListQuery
) -> tuple[list[Model], Pagination]:
    """One workspace's, several workspaces' (a ``-`` list: those the caller can read) or all."""
    stmt = in_workspaces(select(Model), Model.workspace, workspace)
    return run_list_query(session, stmt, query, SORTS, Model.id)


def adapters_of(session: Session, model_ids: Sequence[str]) -> dict[str, list[Adapter]]:
    """Adapters of several models in one query (lists would otherwise do one per model), newest
    first as the reference embeds them."""
    grouped: dict[str, list[Adapter]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        stmt = select(Adapter).where(Adapter.model_id.in_(model_ids)).order_by(Adapter.created_at.desc(), Adapter.id.desc())
        for adapter in session.scalars(stmt):
            grouped[adapter.model_id].append(adapter)
    return grouped


def delete(session: Session, row: Model) -> None:
    """Delete the model and its adapters in the caller's transaction."""
    session.execute(sql_delete(Adapter).where(Adapter.model_id == row.id))
    session.delete(row)
    session.flush()
