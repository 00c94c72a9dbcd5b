"""Multi-LoRA for batched decoding: adapters read from PEFT files, stacked in slots, gathered per row.

Each wrapped base layer computes ``y = base(x) + scale[s] * (x @ A[s]^T) @ B[s]^T`` where ``s`` is the
row's slot, with one ``bmm`` pair over the whole batch (gathered A/B, as in Punica/S-LoRA) rather
than a loop over adapters or merged weights. Slot 0 holds zeros: a base-model row gets exactly
``base(x)``. Ranks are zero-padded to ``max_lora_rank``, which leaves the product unchanged.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from modelyard.engine.adapter_files import AdapterError, read_adapter_config

__all__ = ["AdapterError", "BatchedLoraLinear", "LoraBank", "LoraWeights", "base_layer_shapes", "read_adapter"]

_SERIALS = itertools.count(1)
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraWeights:
    """One adapter's tensors, keyed by the base module's name."""

    name: str
    path: str
    rank: int
    a: dict[str, torch.Tensor] = field(default_factory=dict)  # [r, in]
    b: dict[str, torch.Tensor] = field(default_factory=dict)  # [out, r]
    scale: dict[str, float] = field(default_factory=dict)
    serial: int = field(default_factory=lambda: next(_SERIALS))  # this copy of the weights, unique in the process


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
    config = read_adapter_config(name, path, max_rank=max_rank)
    rank = int(config["r"])
    weights_path = Path(path) / "adapter_model.safetensors"
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
    """Slots of stacked adapter weights shared by every wrapped layer, and the rows' slot indices.

    ``version`` changes whenever the rows' slots or any slot's weights change; layers keep their
    gathered weights until it does, so a steady decode batch (the common case) gathers nothing.
    """

    def __init__(self, model: nn.Module, *, slots: int, max_rank: int) -> None:
        self.model = model
        self.slots = slots + 1  # slot 0 is the base model (zeros)
        self.max_rank = max_rank
        self.layers: dict[str, BatchedLoraLinear] = {}
        self.row_slots: torch.Tensor = torch.zeros(1, dtype=torch.long)
        self.row_list: list[int] = [0]
        self.any_adapter = False
        self.shared_slot: int | None = 0  # the one slot every row uses, if they all use one
        self.used_slots: torch.Tensor = torch.zeros(1, dtype=torch.long)  # distinct slots of the rows
        self._onehot: tuple[int, torch.Tensor] | None = None
        self.version = 0

    def set_rows(self, slots: list[int]) -> None:
        """Which slot each row of the next forward pass uses (or each token, for a packed sequence)."""
        if slots == self.row_list:
            return
        self.row_list = list(slots)
        self.row_slots = torch.tensor(slots, dtype=torch.long)
        self.any_adapter = any(slots)
        self.shared_slot = slots[0] if len(set(slots)) == 1 else None
        self.used_slots = torch.tensor(sorted(set(slots)), dtype=torch.long)
        self.version += 1

    def onehot(self, dtype: torch.dtype) -> torch.Tensor:
        """``[rows, used slots * max_rank]``: 1 where the column belongs to the row's own slot."""
        cached = self._onehot
        if cached is not None and cached[0] == self.version and cached[1].dtype == dtype:
            return cached[1]
        hit = (self.row_slots[:, None] == self.used_slots[None, :]).to(dtype)  # [rows, used]
        mask = hit.repeat_interleave(self.max_rank, dim=1)
        self._onehot = (self.version, mask)
        return mask

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
        self.version += 1

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear(slot)
        self.version += 1


class BatchedLoraLinear(nn.Module):
    """A base Linear/Conv1D plus the gathered LoRA delta of each row's adapter.

    Weights are stored the way ``bmm`` consumes them (A as ``[in, r]``, B as ``[r, out]``) with the
    adapter's scale folded into B, so a decode step costs two matmuls per layer, the second one
    accumulating straight into the base output.
    """

    def __init__(self, base: nn.Module, bank: LoraBank) -> None:
        super().__init__()
        self.base = base
        self.bank = bank
        if isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        else:  # Conv1D
            in_features, out_features = base.weight.shape
        # The bank changes while the engine serves (loads, unloads, swaps), so it must never be an
        # inference tensor, whatever mode the caller is in: those refuse in-place updates outside
        # inference mode. Every write below runs with autograd and inference mode off.
        dtype = base.weight.dtype
        with torch.inference_mode(False), torch.no_grad():
            self.a = torch.zeros(bank.slots, in_features, bank.max_rank, dtype=dtype)
            self.b = torch.zeros(bank.slots, bank.max_rank, out_features, dtype=dtype)
            self.active = torch.zeros(bank.slots, dtype=torch.bool)
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._stacked: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def fill(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        r = a.shape[0]
        with torch.inference_mode(False), torch.no_grad():
            # a and b may be inference tensors (read under inference mode): copy their values only
            self.a[slot].zero_()
            self.b[slot].zero_()
            self.a[slot, :, :r].copy_(a.t())
            self.b[slot, :r, :].copy_(b.t() * scale)
            self.active[slot] = True

    def clear(self, slot: int) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.a[slot].zero_()
            self.b[slot].zero_()
            self.active[slot] = False

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.bank
        cached = self._gathered
        if cached is not None and cached[0] == bank.version:
            return cached[1], cached[2]
        idx = bank.row_slots
        a, b = self.a.index_select(0, idx), self.b.index_select(0, idx)  # [batch, in, r], [batch, r, out]
        self._gathered = (bank.version, a, b)
        return a, b

    def _stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct slots side by side: A as ``[in, used * r]``, B as ``[used * r, out]``."""
        bank = self.bank
        cached = self._stacked
        if cached is not None and cached[0] == bank.version:
            return cached[1], cached[2]
        used = bank.used_slots
        a = self.a.index_select(0, used).permute(1, 0, 2).reshape(self.a.shape[1], -1)
        b = self.b.index_select(0, used).reshape(-1, self.b.shape[2])
        self._stacked = (bank.version, a, b)
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        bank = self.bank
        if not bank.any_adapter:
            return y
        shared = bank.shared_slot
        if shared is not None:  # every row on one adapter: plain matmuls, no gather
            if not self.active[shared]:
                return y
            return y + (x @ self.a[shared]) @ self.b[shared]
        tokens = x.numel() // x.shape[-1]
        if tokens == len(bank.row_list):
            # one slot per token (decode: one token a row; a packed prefill: the rows' tokens in one
            # sequence): two plain matmuls over the batch's distinct adapters side by side, each token's
            # product masked to its own slot's columns (zeros elsewhere leave the sum exact); small
            # batched bmm/baddbmm calls cost more than these on a CPU
            a, b = self._stacked_weights()
            flat = x.reshape(tokens, x.shape[-1])
            mid = (flat @ a).mul_(bank.onehot(a.dtype))
            return torch.addmm(y.reshape(tokens, y.shape[-1]), mid, b).reshape(y.shape)
        a, b = self._weights()
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [batch, tokens, in]
        out = torch.baddbmm(y.reshape(y.shape[0], -1, y.shape[-1]), torch.bmm(flat, a), b)
        return out.reshape(y.shape)
