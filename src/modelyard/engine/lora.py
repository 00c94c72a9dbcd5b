"""Multi-LoRA for batched decoding: adapters read from PEFT files, stacked in slots, gathered per row.

Each wrapped base layer computes ``y = base(x) + scale[s] * (x @ A[s]^T) @ B[s]^T`` where ``s`` is the
row's slot, with one ``bmm`` pair over the whole batch (gathered A/B, as in Punica/S-LoRA) rather
than a loop over adapters or merged weights. Slot 0 holds zeros: a base-model row gets exactly
``base(x)``. Ranks are zero-padded to ``max_lora_rank``, which leaves the product unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be loaded on this engine; the message says why."""


@dataclass
class LoraWeights:
    """One adapter's tensors, keyed by the base module's name."""

    name: str
    path: str
    rank: int
    a: dict[str, torch.Tensor] = field(default_factory=dict)  # [r, in]
    b: dict[str, torch.Tensor] = field(default_factory=dict)  # [out, r]
    scale: dict[str, float] = field(default_factory=dict)


def base_layer_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` for every Linear and GPT-2 Conv1D layer."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BatchedLoraLinear):
            base = module.base  # report the wrapped layer under its own name
        elif name.endswith(".base") and isinstance(model.get_submodule(name[: -len(".base")]), BatchedLoraLinear):
            continue
        else:
            base = module
        if isinstance(base, nn.Linear):
            shapes[name] = (base.in_features, base.out_features)
        elif type(base).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is [in, out]
            shapes[name] = (base.weight.shape[0], base.weight.shape[1])
    return shapes


def read_adapter(
    name: str, path: str | Path, *, max_rank: int, layer_shapes: dict[str, tuple[int, int]]
) -> LoraWeights:
    """Read and validate a PEFT LoRA adapter directory; :class:`AdapterError` explains any problem."""
    folder = Path(path)
    config_path = folder / "adapter_config.json"
    if not folder.is_dir():
        raise AdapterError(f"adapter path '{path}' is not a directory")
    if not config_path.is_file():
        raise AdapterError(f"adapter '{name}' has no adapter_config.json in '{path}'")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise AdapterError(f"adapter '{name}': adapter_config.json is not valid JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter '{name}' is {config.get('peft_type')}, only LORA adapters can be served")
    if config.get("use_dora"):
        raise AdapterError(f"adapter '{name}' uses DoRA, which this engine does not serve")
    rank = int(config.get("r", 0))
    if rank < 1:
        raise AdapterError(f"adapter '{name}' has no valid rank 'r' in adapter_config.json")
    if rank > max_rank:
        raise AdapterError(f"adapter '{name}' has rank {rank}, above this engine's max_lora_rank {max_rank}")
    weights_path = folder / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterError(f"adapter '{name}' has no adapter_model.safetensors in '{path}'")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the adapter's fault
        raise AdapterError(f"adapter '{name}': cannot read adapter_model.safetensors ({exc})") from None

    weights = LoraWeights(name=name, path=str(path), rank=rank)
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if not match:
            continue
        module, which = match.group("module"), match.group("which")
        (weights.a if which == "A" else weights.b)[module] = tensor.to(torch.float32)
    if not weights.a:
        raise AdapterError(f"adapter '{name}' holds no lora_A/lora_B tensors")
    alpha = float(config.get("lora_alpha", rank))
    alpha_pattern = config.get("alpha_pattern") or {}
    for module in sorted(set(weights.a) | set(weights.b)):
        if module not in weights.a or module not in weights.b:
            raise AdapterError(f"adapter '{name}': module '{module}' lacks its lora_A or lora_B tensor")
        if module not in layer_shapes:
            raise AdapterError(
                f"adapter '{name}' targets '{module}', which is not a linear layer of the base model"
            )
        in_features, out_features = layer_shapes[module]
        a, b = weights.a[module], weights.b[module]
        r = a.shape[0]
        if a.ndim != 2 or a.shape[1] != in_features:
            raise AdapterError(
                f"adapter '{name}': {module} expects in_features={in_features}, adapter has lora_A {list(a.shape)}"
            )
        if b.ndim != 2 or b.shape[0] != out_features or b.shape[1] != r:
            raise AdapterError(
                f"adapter '{name}': {module} expects out_features={out_features}, adapter has lora_B {list(b.shape)}"
            )
        if r > max_rank:
            raise AdapterError(f"adapter '{name}': {module} has rank {r}, above max_lora_rank {max_rank}")
        module_alpha = next(
            (float(v) for pattern, v in alpha_pattern.items() if re.search(pattern, module)), alpha
        )
        weights.scale[module] = module_alpha / (r**0.5 if config.get("use_rslora") else r)
    return weights


class LoraBank:
    """Slots of stacked adapter weights shared by every wrapped layer, and the rows' slot indices."""

    def __init__(self, model: nn.Module, *, slots: int, max_rank: int) -> None:
        self.model = model
        self.slots = slots + 1  # slot 0 is the base model (zeros)
        self.max_rank = max_rank
        self.layers: dict[str, BatchedLoraLinear] = {}
        self.row_slots: torch.Tensor = torch.zeros(1, dtype=torch.long)
        self.any_adapter = False

    def set_rows(self, slots: list[int]) -> None:
        """Which slot each row of the next forward pass uses."""
        self.row_slots = torch.tensor(slots, dtype=torch.long)
        self.any_adapter = any(slots)

    def _wrap(self, module_name: str) -> BatchedLoraLinear:
        layer = self.layers.get(module_name)
        if layer is not None:
            return layer
        parent_name, _, child = module_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child)
        layer = BatchedLoraLinear(base, self)
        setattr(parent, child, layer)
        self.layers[module_name] = layer
        return layer

    def write(self, slot: int, weights: LoraWeights) -> None:
        """Put an adapter's tensors in ``slot`` (zeroing modules it does not target)."""
        for layer in self.layers.values():
            layer.clear(slot)
        for module, a in weights.a.items():
            self._wrap(module).fill(slot, a, weights.b[module], weights.scale[module])

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear(slot)


class BatchedLoraLinear(nn.Module):
    """A base Linear/Conv1D plus the gathered LoRA delta of each row's adapter."""

    def __init__(self, base: nn.Module, bank: LoraBank) -> None:
        super().__init__()
        self.base = base
        self.bank = bank
        if isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        else:  # Conv1D
            in_features, out_features = base.weight.shape
        self.a = torch.zeros(bank.slots, bank.max_rank, in_features)
        self.b = torch.zeros(bank.slots, out_features, bank.max_rank)
        self.scale = torch.zeros(bank.slots)

    def fill(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        r = a.shape[0]
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :r] = a
        self.b[slot, :, :r] = b
        self.scale[slot] = scale

    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.scale[slot] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        bank = self.bank
        if not bank.any_adapter:
            return y
        idx = bank.row_slots
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [batch, tokens, in]
        a = self.a.index_select(0, idx)  # [batch, rank, in]
        b = self.b.index_select(0, idx)  # [batch, out, rank]
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        delta = delta * self.scale.index_select(0, idx).view(-1, 1, 1)
        return y + delta.reshape(y.shape)
