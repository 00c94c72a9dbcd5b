"""Uniqueness is the database's job: racing creates of one name give one 201 and the rest 409."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from modelyard.client import Modelyard
from tests.conftest import make_fileset

N = 20


async def _race(url: str, path: str, body: dict) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        responses = await asyncio.gather(*(http.post(path, json=body) for _ in range(N)))
    return sorted(r.status_code for r in responses)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/apis/models/v2/workspaces/default/models", {"name": "contested"}),
        ("/apis/entities/v2/workspaces", {"name": "contested-ws"}),
    ],
)
def test_concurrent_creates_of_one_name(live_server: str, path: str, body: dict) -> None:
    statuses = asyncio.run(_race(live_server, path, body))
    assert statuses == [201] + [409] * (N - 1)


def test_concurrent_adapter_creates(live_server: str) -> None:
    httpx.post(f"{live_server}/apis/models/v2/workspaces/default/models", json={"name": "race-base"}).raise_for_status()
    with Modelyard(live_server) as client:
        make_fileset(client, "default/fs1")
    body = {"name": "contested", "model": "race-base", "fileset": "fs1", "finetuning_type": "lora"}
    statuses = asyncio.run(_race(live_server, "/apis/models/v2/workspaces/default/adapters", body))
    assert statuses == [201] + [409] * (N - 1)
