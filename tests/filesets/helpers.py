"""Where the local blob area keeps things, for assertions."""

from __future__ import annotations

from pathlib import Path

from modelyard.config import Settings


def blob_path(settings: Settings, sha256: str) -> Path:
    return settings.home / "blobs" / sha256[:2] / sha256


def blobs_stored(settings: Settings) -> list[str]:
    """Names of everything in the local blob area: blobs by sha256, temporaries as ``.tmp-*``."""
    root = settings.home / "blobs"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []
