"""``GET /v1/usage``: the query's rules (range, granularity, bounds) and the wire rows.

Buckets are aligned to UTC minutes, hours and days. ``from`` is rounded down to the start of its
bucket and ``to`` is exclusive (a minute counts when it starts before ``to``), so every bucket returned
is whole and a request made just now (the current minute) is included with the default ``to``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from modelyard.db.tables import USAGE_LATENCY_COLUMNS
from modelyard.errors import ApiError, clip
from modelyard.usage import store
from modelyard.usage.histogram import percentile
from modelyard.usage.schemas import LatencyPercentiles, UsageList, UsageRecord

WIDTH = {"minute": 1, "hour": 60, "day": 1440}
"""Minutes per bucket."""
MAX_SPAN = {"minute": timedelta(days=2), "hour": timedelta(days=93), "day": timedelta(days=732)}
"""The longest ``to - from`` each granularity may cover (at most 2,880, 2,232 and 732 buckets per model)."""
MAX_ROWS = 20_000
"""Most rows one answer may hold; beyond it the query is refused (400) and should be narrowed."""
DEFAULT_SPAN = timedelta(hours=24)


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def parse_time(value: str | None, param: str) -> datetime | None:
    """An ISO-8601 date or date-time (``Z`` or an offset; none means UTC) as an aware UTC datetime."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO-8601; or beyond year 1..9999 once moved to UTC
        raise _bad(f"'{param}' must be an ISO-8601 date-time such as 2026-12-01T13:00:00Z, not "
                   f"'{clip(value, 100)}'", param) from None


def window(granularity: str, start: str | None, end: str | None, now: datetime | None = None
           ) -> tuple[int, int, int]:
    """``(first_minute, end_minute, width)`` of a query, or a 400 naming what is wrong."""
    if granularity not in WIDTH:
        raise _bad(f"'granularity' must be one of minute, hour, day, not '{clip(granularity, 100)}'", "granularity")
    to = parse_time(end, "to") or (now or datetime.now(UTC))
    try:
        since = parse_time(start, "from") or to - DEFAULT_SPAN
    except OverflowError:  # 'to' in the first day of year 1
        raise _bad("'to' is too early: give 'from' too", "to") from None
    if since > to:
        raise _bad(f"'from' ({since.isoformat()}) is after 'to' ({to.isoformat()})", "from")
    if to - since > MAX_SPAN[granularity]:
        raise _bad(f"granularity '{granularity}' covers at most {MAX_SPAN[granularity].days} days; narrow "
                   f"'from'/'to' or ask for a coarser granularity", "from")
    width = WIDTH[granularity]
    first = math.floor(since.timestamp() / 60) // width * width
    last = math.ceil(to.timestamp() / 60)  # exclusive: the minute that starts at or after 'to'
    return first, last, width


def _start(bucket: int) -> str:
    return datetime.fromtimestamp(bucket * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_wire(workspace: str, granularity: str, row: dict[str, Any]) -> UsageRecord:
    counts = [int(row[name] or 0) for name in USAGE_LATENCY_COLUMNS]
    return UsageRecord(
        workspace=workspace, model=row["model"], endpoint_id=row["endpoint_id"] or None,
        start=_start(int(row["bucket"])), granularity=granularity,  # type: ignore[arg-type]
        requests=int(row["requests"] or 0), errors=int(row["errors"] or 0),
        prompt_tokens=int(row["prompt_tokens"] or 0), completion_tokens=int(row["completion_tokens"] or 0),
        latency_ms=LatencyPercentiles(p50=percentile(counts, 0.50), p95=percentile(counts, 0.95),
                                      p99=percentile(counts, 0.99)),
    )


def list_(session: Session, workspace: str, *, model: str | None, granularity: str, first_minute: int,
          end_minute: int) -> UsageList:
    width = WIDTH[granularity]
    rows = store.sums(session, workspace, model=model, first_minute=first_minute, end_minute=end_minute,
                      width=width, limit=MAX_ROWS + 1)
    if len(rows) > MAX_ROWS:
        raise _bad(f"more than {MAX_ROWS} rows match; narrow 'from'/'to', filter by 'model' or ask for a "
                   "coarser granularity", "from")
    return UsageList(data=[to_wire(workspace, granularity, row) for row in rows])
