"""``GET /apis/auth/v2/audit``: the audit trail."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from modelyard.audit import service, store
from modelyard.audit.schemas import AuditEvent
from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.listing import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, ListQuery, Page, parse_list_query

router = APIRouter(prefix="/apis/auth/v2/audit", tags=["audit"])

AuditSort = Literal["at", "-at", "principal", "-principal", "action", "-action", "status", "-status"]


def audit_query(
    request: Request,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1")] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page")] = DEFAULT_PAGE_SIZE,
    sort: Annotated[AuditSort, Query(description="Sort field; prefix '-' for descending")] = "-at",
) -> ListQuery:
    return parse_list_query(request.query_params, store.FILTERS, sort=sort, page=page, page_size=page_size)


audit_query.__doc__ = f"Filters: {', '.join(f'filter[{name}]' for name in store.FILTERS)}"


@router.get("", response_model=Page[AuditEvent])
def list_audit_events(
    session: SessionDep, access: AccessDep, query: Annotated[ListQuery, Depends(audit_query)]
) -> Page[AuditEvent]:
    """Changes attempted through the API, newest first: all of them for a PlatformAdmin, those of the
    workspaces where the caller is Admin for anyone else."""
    return service.list_(session, query, access)
