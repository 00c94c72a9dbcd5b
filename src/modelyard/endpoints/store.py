"""Endpoint and attachment queries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import Adapter, Endpoint, EndpointAdapter


def find(session: Session, endpoint_id: str) -> Endpoint | None:
    return session.get(Endpoint, endpoint_id)


def find_by_name(session: Session, name: str) -> Endpoint | None:
    return session.scalar(select(Endpoint).where(Endpoint.name == name))


def list_(session: Session, *, workspace: str | None = None, type_: str | None = None) -> list[Endpoint]:
    stmt = select(Endpoint).order_by(Endpoint.created_at, Endpoint.id)
    if workspace is not None:
        stmt = stmt.where(Endpoint.workspace == workspace)
    if type_ is not None:
        stmt = stmt.where(Endpoint.type == type_)
    return list(session.scalars(stmt))


def add(session: Session, row: Endpoint) -> Endpoint:
    insert_unique(session, row, f"Endpoint '{row.name}' already exists")
    return row


def delete(session: Session, row: Endpoint) -> None:
    session.delete(row)
    session.flush()


def binding(session: Session, adapter_id: str) -> EndpointAdapter | None:
    return session.get(EndpointAdapter, adapter_id)


def bindings(session: Session, endpoint_id: str) -> list[EndpointAdapter]:
    stmt = select(EndpointAdapter).where(EndpointAdapter.endpoint_id == endpoint_id)
    return list(session.scalars(stmt.order_by(EndpointAdapter.created_at, EndpointAdapter.adapter_name)))


def attached_adapters(session: Session, endpoint_id: str) -> list[Adapter]:
    """The adapters attached to an endpoint, enabled or not."""
    stmt = (
        select(Adapter)
        .join(EndpointAdapter, EndpointAdapter.adapter_id == Adapter.id)
        .where(EndpointAdapter.endpoint_id == endpoint_id)
        .order_by(EndpointAdapter.created_at)
    )
    return list(session.scalars(stmt))


def bindings_of_adapters(session: Session, adapter_ids: list[str]) -> list[EndpointAdapter]:
    if not adapter_ids:
        return []
    return list(session.scalars(select(EndpointAdapter).where(EndpointAdapter.adapter_id.in_(adapter_ids))))


def endpoints_of_model(session: Session, model_id: str) -> list[Endpoint]:
    return list(session.scalars(select(Endpoint).where(Endpoint.model_id == model_id)))
