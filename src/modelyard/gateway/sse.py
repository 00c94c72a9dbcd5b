"""Server-sent event lines as the gateway relays them."""

from __future__ import annotations

import json


def with_model(line: str, model: str) -> str:
    """One SSE line with the chunk's ``model`` set to the name the client used (other lines as they are)."""
    if not line.startswith("data: {"):
        return line
    try:
        chunk = json.loads(line[6:])
    except ValueError:
        return line
    if isinstance(chunk, dict) and "model" in chunk:
        chunk["model"] = model
        return "data: " + json.dumps(chunk, separators=(",", ":"))
    return line
