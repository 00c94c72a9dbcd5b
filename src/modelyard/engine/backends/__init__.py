"""Ways of running engine replicas, behind one protocol (:mod:`.base`).

* ``local``: child processes of this server (the built-in engine or vLLM), on this machine;
* ``ray``: the same engine servers, placed on the nodes of a Ray cluster by the endpoint's resources;
* ``remote``: servers someone else runs, known by URL; never started or stopped by us.

An endpoint names its ``engine`` (one of :data:`ENGINE_NAMES`) and, for engines we start, its
``placement`` (one of :data:`PLACEMENTS`; by default ``ray`` when ``MODELYARD_RAY_ADDRESS`` is set,
else ``local``). Backends are imported on first use, so Ray is needed only where it is used.
"""

from __future__ import annotations

import importlib

from modelyard.config import Settings
from modelyard.engine.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ReplicaHandle,
    ReplicaSpec,
)
from modelyard.engine.backends.engines import ENGINES, EngineKind

_BACKENDS: dict[str, str] = {
    "local": "modelyard.engine.backends.local:LocalBackend",
    "ray": "modelyard.engine.backends.ray:RayBackend",
    "remote": "modelyard.engine.backends.remote:RemoteBackend",
}
REMOTE = "remote"
ENGINE_NAMES: tuple[str, ...] = (*ENGINES, REMOTE)
"""What an endpoint's ``engine`` may be: every engine kind we can start, and ``remote``."""
PLACEMENTS: tuple[str, ...] = tuple(name for name in _BACKENDS if name != REMOTE)
"""Where engines we start may run."""


def backend_name(engine: str, placement: str | None, settings: Settings) -> str:
    """The backend that runs replicas of an endpoint with this engine and placement."""
    if engine == REMOTE:
        return REMOTE
    return placement or ("ray" if settings.ray_address else "local")


class Backends:
    """The backends of one server process, each made once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        if name not in self._made:
            if name not in _BACKENDS:
                raise BackendError(f"unknown backend '{name}'; known: {', '.join(_BACKENDS)}")
            module, _, cls = _BACKENDS[name].partition(":")
            self._made[name] = getattr(importlib.import_module(module), cls)(self.settings)
        return self._made[name]

    async def close(self) -> None:
        for made in self._made.values():
            await made.close()
        self._made.clear()


__all__ = ["ENGINES", "ENGINE_NAMES", "PLACEMENTS", "REMOTE", "Backend", "BackendError", "BackendUnavailable",
           "Backends", "EngineKind", "ReplicaHandle", "ReplicaSpec", "backend_name"]
