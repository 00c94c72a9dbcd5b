"""Wire models of ``GET /v1/usage`` as the SDK reads them (pydantic only; lenient like types_auth)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class LatencyPercentiles(_Wire):
    """Milliseconds (each within ±9 % of the true value); None when no request of the bucket succeeded."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class UsageRecord(_Wire):
    """One model (and endpoint) in one minute, hour or day."""

    workspace: str
    model: str
    endpoint_id: str | None = None
    start: str
    """Start of the bucket, ISO-8601 UTC (``2026-12-01T13:05:00Z``)."""
    granularity: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: LatencyPercentiles = Field(default_factory=LatencyPercentiles)


class UsageList(_Wire):
    object: str = "list"
    data: list[UsageRecord] = Field(default_factory=list)
