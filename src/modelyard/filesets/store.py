"""Fileset and file queries."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter, BlobArea, Fileset, FilesetFile, Model
from modelyard.errors import NotFound
from modelyard.listing import FilterField, ListQuery, Pagination, in_workspaces, run_list_query

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
        raise NotFound(f"Fileset '{name}' not found in workspace '{workspace}'")
    return row


def add(session: Session, row: Fileset) -> Fileset:
    insert_unique(session, row, f"Fileset '{row.workspace}/{row.name}' already exists")
    return row


def list_(
    session: Session, workspace: str | Collection[str] | None, query: ListQuery
) -> tuple[list[Fileset], Pagination]:
    """One workspace's, several workspaces' (a ``-`` list: those the caller can read) or all."""
    stmt = in_workspaces(select(Fileset), Fileset.workspace, workspace)
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


def touch(session: Session, fileset_id: str, now: datetime) -> bool:
    """Mark fileset ``fileset_id`` changed; False when it no longer exists. On PostgreSQL this also
    locks its row until the transaction ends, so a concurrent delete waits (or has already won)."""
    result = session.execute(update(Fileset).where(Fileset.id == fileset_id).values(updated_at=now))
    return bool(result.rowcount)


def put_file(session: Session, fileset_id: str, path: str, size: int, sha256: str, now: datetime) -> None:
    """Point ``path`` at blob ``sha256``: one upsert, so concurrent PUTs of one path never collide on
    the primary key (the last to commit wins, whole)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(FilesetFile).values(fileset_id=fileset_id, path=path, size=size, sha256=sha256, updated_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=[FilesetFile.fileset_id, FilesetFile.path],
                                      set_={"size": size, "sha256": sha256, "updated_at": now})
    session.execute(stmt)
    session.expire_all()


def referenced_blobs(session: Session) -> list[tuple[dict, str]]:
    """``(storage, sha256)`` of every file row: what the sweeper must keep."""
    rows = session.execute(select(Fileset.storage, FilesetFile.sha256).join(FilesetFile,
                                                                            FilesetFile.fileset_id == Fileset.id))
    return [(storage, sha) for storage, sha in rows]


def storages(session: Session) -> list[dict]:
    return [s for (s,) in session.execute(select(Fileset.storage))]


def legacy(session: Session) -> list[Fileset]:
    return list(session.scalars(select(Fileset).where(Fileset.layout == 1)))


def remember_area(session: Session, key: str, storage: dict, now: datetime) -> None:
    """Record blob area ``key`` once (concurrent creates never collide: conflicts do nothing)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(BlobArea).values(key=key, storage=storage, created_at=now)
                    .on_conflict_do_nothing(index_elements=[BlobArea.key]))


def areas(session: Session) -> dict[str, dict]:
    return {key: storage for key, storage in session.execute(select(BlobArea.key, BlobArea.storage))}
