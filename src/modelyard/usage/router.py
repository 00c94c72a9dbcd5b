"""``GET /v1/usage``: usage records of the caller's workspace (Viewer; scope ``inference:read``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from modelyard.auth.deps import CallerWorkspace
from modelyard.db.session import in_db
from modelyard.usage import service
from modelyard.usage.recorder import UsageRecorder
from modelyard.usage.schemas import UsageList

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage", response_model=UsageList,
            responses={400: {"description": "a bad 'from'/'to'/'granularity', or a range too long for it"}})
async def list_usage(
    request: Request, workspace: CallerWorkspace,
    model: Annotated[str | None, Query(max_length=255, description="only this model (the name requests called)")] = None,
    start: Annotated[str | None, Query(alias="from", max_length=64,
                                       description="ISO-8601; default: 24 hours before 'to'")] = None,
    end: Annotated[str | None, Query(alias="to", max_length=64, description="ISO-8601, exclusive; default: now")] = None,
    granularity: Annotated[str, Query(max_length=16, description="minute, hour or day")] = "hour",
) -> UsageList:
    """Requests, errors, tokens and latency percentiles (ms, from merged histograms: each within ±9 %)
    per model and endpoint per UTC minute, hour or day, ordered by ``start`` then ``model``. What this
    server has counted but not yet written is written first, so a request made just now is included
    (other server processes write theirs every ``MODELYARD_USAGE_FLUSH_INTERVAL`` seconds)."""
    first, last, _ = service.window(granularity, start, end)
    recorder: UsageRecorder | None = getattr(request.app.state, "usage", None)
    if recorder is not None:
        await recorder.flush_async()
    return await in_db(request.app.state.db, lambda s: service.list_(
        s, workspace, model=model, granularity=granularity, first_minute=first, end_minute=last))
