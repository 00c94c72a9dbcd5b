"""Engine kinds: how to start each engine's OpenAI server as a process, wherever it is placed.

Every kind speaks the same protocol (OpenAI + vLLM's runtime LoRA routes), so the rest of Modelyard
does not care which one runs. Adding an engine (SGLang, say) is one more :class:`EngineKind` here:
the endpoint schema, the local and Ray backends pick it up from :data:`ENGINES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.config import Settings
from modelyard.engine.backends.base import ReplicaSpec
from modelyard.engine.process import builtin_command
from modelyard.engine.vllm import vllm_command, vllm_env, vllm_problem, vllm_python


@dataclass(frozen=True)
class EngineKind:
    name: str
    command: Callable[[ReplicaSpec, str, int, Settings], tuple[list[str], dict[str, str]]]
    """(argv, environment) for a server of ``spec`` on ``host:port``."""
    problem: Callable[[Settings], str | None] = lambda settings: None
    """Why this server cannot run the engine (None when it can); may run a short subprocess."""


def _builtin(spec: ReplicaSpec, host: str, port: int, settings: Settings) -> tuple[list[str], dict[str, str]]:
    argv = builtin_command(spec.model_path or "", served_name=spec.served_name, host=host, port=port,
                           max_loras=spec.max_loras, max_lora_rank=spec.max_lora_rank,
                           orphan_timeout=spec.orphan_timeout)
    return argv, {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}


def _vllm(spec: ReplicaSpec, host: str, port: int, settings: Settings) -> tuple[list[str], dict[str, str]]:
    argv = vllm_command(spec.model_path or "", served_name=spec.served_name, host=host, port=port,
                        max_loras=spec.max_loras, max_lora_rank=spec.max_lora_rank,
                        python=settings.vllm_python or vllm_python())
    return argv, {**vllm_env(), **spec.env}


def _vllm_problem(settings: Settings) -> str | None:
    problem = vllm_problem(settings.vllm_python or vllm_python())
    if problem is None:
        return None
    return (f"{problem}. Build vLLM's environment with `make vllm-env`, or point MODELYARD_VLLM_PYTHON at an "
            "interpreter that has vLLM installed; or use engine 'builtin'")


ENGINES: dict[str, EngineKind] = {
    "builtin": EngineKind("builtin", _builtin),
    "vllm": EngineKind("vllm", _vllm, _vllm_problem),
}
