"""Usage queries: the rows of ``usage_minutes`` summed per bucket (every writer's rows added up)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard.db.tables import USAGE_LATENCY_COLUMNS, usage_minutes

U = usage_minutes.c


def sums(session: Session, workspace: str, *, model: str | None, first_minute: int, end_minute: int,
         width: int, limit: int) -> list[dict[str, Any]]:
    """Per bucket of ``width`` minutes (aligned to the Unix epoch, so hours and UTC days), model and
    endpoint: the summed counters and histogram of minutes in [first_minute, end_minute), ordered by
    bucket, model, endpoint; at most ``limit`` rows."""
    bucket = (U.minute // width * width) if width > 1 else U.minute
    bucket = bucket.label("bucket")
    stmt = (
        select(bucket, U.model, U.endpoint_id,
               func.sum(U.requests).label("requests"), func.sum(U.errors).label("errors"),
               func.sum(U.prompt_tokens).label("prompt_tokens"),
               func.sum(U.completion_tokens).label("completion_tokens"),
               *(func.sum(U[name]).label(name) for name in USAGE_LATENCY_COLUMNS))
        .where(U.workspace == workspace, U.minute >= first_minute, U.minute < end_minute)
        .group_by(bucket, U.model, U.endpoint_id)
        .order_by(bucket, U.model, U.endpoint_id)
        .limit(limit)
    )
    if model is not None:
        stmt = stmt.where(U.model == model)
    return [dict(row._mapping) for row in session.execute(stmt)]
