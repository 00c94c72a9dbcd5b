"""Secret queries, and the rows that hold encrypted values (for key rotation)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Model, Secret, SigningKey
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, run_list_query

FILTERS = {
    "name": FilterField("string", Secret.name),
    "description": FilterField("string", Secret.description),
    "created_at": FilterField("timestamp", Secret.created_at),
    "updated_at": FilterField("timestamp", Secret.updated_at),
}
SORTS = {"name": Secret.name, "created_at": Secret.created_at, "updated_at": Secret.updated_at}


def get(session: Session, workspace: str, name: str) -> Secret:
    row = session.get(Secret, (workspace, name))
    if row is None:
        raise NotFound(f"Secret with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: Secret) -> Secret:
    insert_unique(session, row, f"Secret with workspace '{row.workspace}' and name '{row.name}' already exists")
    return row


def list_(session: Session, workspace: str, query: ListQuery) -> tuple[list[Secret], Pagination]:
    return run_list_query(session, select(Secret).where(Secret.workspace == workspace), query, SORTS, Secret.name)


def delete(session: Session, row: Secret) -> None:
    session.delete(row)
    session.flush()


def all_secrets(session: Session) -> list[Secret]:
    """Every secret, locked for the rest of the transaction (a rotation rewrites them all)."""
    return list(session.scalars(select(Secret).order_by(Secret.workspace, Secret.name).with_for_update()))


def all_signing_keys(session: Session) -> list[SigningKey]:
    return list(session.scalars(select(SigningKey).order_by(SigningKey.kid).with_for_update()))


def models_with_endpoints(session: Session) -> list[Model]:
    """Models that have an ``api_endpoint`` (which may hold an encrypted API key). Filtered here, not in
    SQL: a JSON column may hold SQL NULL or JSON ``null`` for "none"."""
    rows = session.scalars(select(Model).order_by(Model.id).with_for_update())
    return [row for row in rows if row.api_endpoint]


def flush(session: Session) -> None:
    session.flush()
