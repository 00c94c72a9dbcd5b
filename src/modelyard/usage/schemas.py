"""Wire models of ``GET /v1/usage``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Granularity = Literal["minute", "hour", "day"]


class LatencyPercentiles(BaseModel):
    """Milliseconds, from the merged latency histograms of successful requests (each within ±9 %, see
    :mod:`modelyard.usage.histogram`); null when the bucket has no successful request."""

    p50: float | None
    p95: float | None
    p99: float | None


class UsageRecord(BaseModel):
    workspace: str
    model: str = Field(description="the name the request called: an adapter, a base model, a provider's model")
    endpoint_id: str | None = Field(description="the endpoint that served it; null when none of ours did")
    start: str = Field(description="start of the bucket, ISO-8601 UTC (e.g. 2026-12-01T13:05:00Z)")
    granularity: Granularity
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: LatencyPercentiles


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
