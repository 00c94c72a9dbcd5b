"""Fileset and file queries."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter, Fileset, FilesetFile, Model
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, run_list_query

FILTERS = {
    "name": FilterField("string", Fileset.name),
    "description": FilterField("string", Fileset.description),
    "purpose": FilterField("string", Fileset.purpose),
    "storage_type": FilterField("string", Fileset.storage_type),
    "created_at": FilterField("timestamp", Fileset.created_at),
    "updated_at": FilterField("timestamp", Fileset.updated_at),
}
SORTS = {"name": Fileset.name, "created_at": Fileset.created_at, "updated_at": Fileset.updated_at}


def find(session: Session, workspace: str, name: str) -> Fileset | None:
    return session.scalar(select(Fileset).where(Fileset.workspace == workspace, Fileset.name == name))


def get(session: Session, workspace: str, name: str) -> Fileset:
    row = find(session, workspace, name)
    if row is None:
        raise NotFound(f"Fileset with workspace '{workspace}' and name '{name}' not found")
    return row


def add(session: Session, row: Fileset) -> Fileset:
    insert_unique(session, row, f"Fileset with workspace '{row.workspace}' and name '{row.name}' already exists")
    return row


def list_(session: Session, workspace: str | None, query: ListQuery) -> tuple[list[Fileset], Pagination]:
    stmt = select(Fileset)
    if workspace is not None:
        stmt = stmt.where(Fileset.workspace == workspace)
    return run_list_query(session, stmt, query, SORTS, Fileset.id)


def delete(session: Session, row: Fileset) -> None:
    session.delete(row)
    session.flush()


def files(session: Session, fileset_id: str, prefix: str | None = None) -> list[FilesetFile]:
    stmt = select(FilesetFile).where(FilesetFile.fileset_id == fileset_id)
    if prefix:
        stmt = stmt.where(or_(FilesetFile.path == prefix, FilesetFile.path.startswith(prefix.rstrip("/") + "/")))
    return list(session.scalars(stmt.order_by(FilesetFile.path)))


def file(session: Session, fileset_id: str, path: str) -> FilesetFile | None:
    return session.get(FilesetFile, (fileset_id, path))


def users(session: Session, reference: str) -> list[str]:
    """``model ws/name`` / ``adapter ws/name`` for everything that points at fileset ``reference``."""
    models = session.execute(select(Model.workspace, Model.name).where(Model.fileset == reference)).all()
    adapters = session.execute(select(Adapter.workspace, Adapter.name).where(Adapter.fileset == reference)).all()
    return [f"model '{w}/{n}'" for w, n in models] + [f"adapter '{w}/{n}'" for w, n in adapters]
