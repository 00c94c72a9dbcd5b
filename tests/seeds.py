"""Read the API reference pages in ``tests/spec_seeds`` (copied from the project's shared spec)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

SEEDS = Path(__file__).parent / "spec_seeds"


def seed_text(prefix: str) -> str:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path.read_text()


def example(prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (request, response) JSON examples of a seed page."""
    text = seed_text(prefix)
    request = re.search(r"\*\*Request\*\*\s*```json\n(.*?)```", text, re.DOTALL)
    response = re.search(r"\*\*Response\*\*\s*```json\n(.*?)```", text, re.DOTALL)
    assert request and response, f"seed {prefix} has no request/response example"
    return json.loads(request.group(1)), json.loads(response.group(1))


def openapi_schemas(prefix: str) -> dict[str, Any]:
    text = seed_text(prefix)
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block, f"seed {prefix} has no OpenAPI block"
    return yaml.safe_load(block.group(1))["components"]["schemas"]
