"""HTTP routes of the auth service: access keys, JWKS, discovery, role bindings."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["auth"])
