"""Checks on a PEFT adapter directory that need no weights and no torch.

The gateway runs them before it asks any engine to load an adapter, so a folder without
``adapter_config.json`` or with a rank above the endpoint's limit is refused with a clear message
by us, the same way for the built-in engine and for vLLM (whose own errors are terse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class AdapterError(ValueError):
    """An adapter that cannot be loaded on this engine; the message says why."""


def read_adapter_config(name: str, path: str | Path, *, max_rank: int) -> dict[str, Any]:
    """Validate ``adapter_config.json`` and the presence of the weights; return the parsed config."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(f"adapter path '{path}' is not a directory")
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterError(f"adapter '{name}' has no adapter_config.json in '{path}'")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise AdapterError(f"adapter '{name}': adapter_config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter '{name}': adapter_config.json must hold a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter '{name}' is {config.get('peft_type')}, only LORA adapters can be served")
    if config.get("use_dora"):
        raise AdapterError(f"adapter '{name}' uses DoRA, which this engine does not serve")
    try:
        rank = int(config.get("r", 0))
    except (TypeError, ValueError):
        rank = 0
    if rank < 1:
        raise AdapterError(f"adapter '{name}' has no valid rank 'r' in adapter_config.json")
    if rank > max_rank:
        raise AdapterError(f"adapter '{name}' has rank {rank}, above this engine's max_lora_rank {max_rank}")
    if not (folder / "adapter_model.safetensors").is_file():
        raise AdapterError(f"adapter '{name}' has no adapter_model.safetensors in '{path}'")
    return config
