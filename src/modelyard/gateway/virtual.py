"""Virtual models on the gateway's request path: a request's ``model`` that names a virtual model
(``name`` or ``ws/name``) becomes one of its targets, picked at random by weight, which is then
resolved as any other name. The client still gets the virtual model's name back as ``model``.

Each workspace's virtual models are read in one query and kept for at most a second per server (the
routes that change them clear it at once), so the hot path does not touch the database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from modelyard.db.session import in_db
from modelyard.gateway import cache as caches
from modelyard.virtual_models import store

_CACHE_TTL_S = 1.0


@dataclass(frozen=True)
class VirtualRoute:
    workspace: str
    name: str
    models: tuple[str, ...]
    weights: tuple[int, ...]

    def pick(self) -> str:
        if len(self.models) == 1:
            return self.models[0]
        return random.choices(self.models, weights=self.weights)[0]


def _routes(rows: list[Any]) -> dict[str, VirtualRoute]:
    out: dict[str, VirtualRoute] = {}
    for row in rows:
        targets = row.targets or ([{"model": row.default_model_entity, "weight": 1}] if row.default_model_entity
                                  else [])
        if targets:
            out[row.name] = VirtualRoute(row.workspace, row.name, tuple(t["model"] for t in targets),
                                         tuple(int(t.get("weight", 1)) for t in targets))
    return out


def _cache(request: Request) -> caches.TtlCache[dict[str, VirtualRoute]]:
    return caches.of(request.app.state, "virtual_models", _CACHE_TTL_S)


def clear(request: Request) -> None:
    _cache(request).clear()


async def _in_workspace(request: Request, workspace: str) -> dict[str, VirtualRoute]:
    db = request.app.state.db
    return await _cache(request).get(workspace, lambda: in_db(db, lambda s: _routes(store.in_workspace(s, workspace))))


async def lookup(request: Request, workspace: str, model: str) -> VirtualRoute | None:
    """The virtual model ``model`` names, asked in ``workspace`` (``name``, or ``ws/name`` in any
    workspace the caller can read); None when it names none."""
    if ":" in model or model.count("/") > 1:
        return None
    ws, _, name = model.rpartition("/")
    ws = ws or workspace
    if not request.state.access.can(ws):
        return None
    return (await _in_workspace(request, ws)).get(name)


async def listed(request: Request, workspace: str) -> list[tuple[str, str]]:
    """``(id, owner)`` of the virtual models of ``workspace`` (for ``/v1/models``), ids ``ws/name``."""
    if not request.state.access.can(workspace):
        return []
    return [(f"{route.workspace}/{name}", route.workspace) for name, route in (await _in_workspace(request, workspace)).items()]
