"""Audit trail wire models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from modelyard.workspaces.schemas import WireModel

Outcome = Literal["success", "denied", "failed"]


class AuditEvent(WireModel):
    id: int
    at: datetime
    """When the request arrived (UTC)."""
    principal: str
    """Who made it; ``anonymous`` when no credentials were accepted."""
    action: str
    """The operation, by its stable name (``create_model``), or ``METHOD path`` when no route matched."""
    method: str
    path: str
    workspace: str | None = None
    target: str | None = None
    """The path parameters joined with ``/``, plus the name or id of what was created."""
    status: int
    outcome: Outcome
    """``success`` (2xx, 3xx), ``denied`` (refused by authentication or authorization), ``failed``."""
    request_id: str | None = None
