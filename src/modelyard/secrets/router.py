"""HTTP routes of the secrets service: ``/apis/secrets/v2/...``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["secrets"])
