"""Audit trail queries: one insert per recorded request, and the filtered list."""

from __future__ import annotations

from sqlalchemy import String, cast, select
from sqlalchemy.orm import Session

from modelyard.db.tables import AuditEvent
from modelyard.listing import FilterField, ListQuery, Pagination, run_list_query

FILTERS = {
    "principal": FilterField("string", AuditEvent.principal),
    "action": FilterField("string", AuditEvent.action),
    "method": FilterField("string", AuditEvent.method),
    "workspace": FilterField("string", AuditEvent.workspace),
    "target": FilterField("string", AuditEvent.target),
    "outcome": FilterField("string", AuditEvent.outcome),
    # compared as text: filter[status]=409, filter[status][$in]=401,403, filter[status][$like]=4*
    "status": FilterField("string", cast(AuditEvent.status, String)),
    "request_id": FilterField("string", AuditEvent.request_id),
    "at": FilterField("timestamp", AuditEvent.at),
}
SORTS = {"at": AuditEvent.at, "principal": AuditEvent.principal, "action": AuditEvent.action,
         "status": AuditEvent.status}


def add(session: Session, row: AuditEvent) -> None:
    session.add(row)
    session.flush()


def list_(session: Session, query: ListQuery, workspaces: frozenset[str] | None) -> tuple[list[AuditEvent], Pagination]:
    """Events matching ``query``; with ``workspaces``, only those recorded in one of them."""
    stmt = select(AuditEvent)
    if workspaces is not None:
        stmt = stmt.where(AuditEvent.workspace.in_(sorted(workspaces)))
    return run_list_query(session, stmt, query, SORTS, AuditEvent.id)
