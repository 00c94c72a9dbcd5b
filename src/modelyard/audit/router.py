"""``GET /apis/auth/v2/audit``: the audit trail."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["audit"])
