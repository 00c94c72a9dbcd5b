"""A checkpoint's ``ModelSpec`` and an adapter's LoRA facts, read from the files themselves.

Only small files and safetensors *headers* are read (8-byte length + JSON, fetched with range reads,
so a remote 7B checkpoint costs a few kilobytes): ``config.json``, ``tokenizer_config.json`` /
``chat_template.jinja``, ``model.safetensors.index.json`` and each shard's header. Weights are never
loaded.

GPU estimates (documented in the README): 80 GB GPUs of which 90% is usable, sequence length 4096,
batch 1, LoRA rank 32 on every linear layer.

* ``minimum_gpus_all_weights`` (serving the full model) =
  ceil((params · bytes_per_param + kv_cache) · 1.2 / 72 GB), with
  kv_cache = 2 · layers · kv_heads · head_dim · 4096 · bytes_per_param, and 1.2 for activations and
  runtime buffers;
* ``minimum_gpus_lora`` (LoRA fine-tuning) = ceil((params · bytes_per_param + lora_params · 16
  + activations) · 1.2 / 72 GB), with lora_params = 32 · Σ(in + out) over linear layers, 16 bytes per
  trainable parameter (weight, gradient, two fp32 Adam moments) and activations = layers · 4096 ·
  hidden · 34 bytes (one sequence, no recomputation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

GPU_BYTES = 80e9 * 0.9
SEQUENCE = 4096
LORA_RANK = 32
MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2", "F64": "float64"}
_CONV1D = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")  # GPT-2 style: weight is [in, out]
_EMBEDDING = re.compile(r"(embed|wte|wpe|embedding|shared)", re.IGNORECASE)


log = logging.getLogger("modelyard.spec")


class SpecError(ValueError):
    """The files are there but cannot be read as a checkpoint or an adapter; the message says why."""


@dataclass
class Files:
    """Read access to a fileset: its paths and sizes, and a range reader."""

    sizes: dict[str, int]
    read: Callable[[str, int, int], bytes]  # (path, start, length) -> bytes

    def has(self, path: str) -> bool:
        return path in self.sizes

    def text(self, path: str) -> str:
        return self.read(path, 0, self.sizes[path]).decode("utf-8")

    def json(self, path: str) -> Any:
        try:
            return json.loads(self.text(path))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SpecError(f"{path} is not valid UTF-8 JSON ({type(exc).__name__})") from None

    def json_object(self, path: str) -> dict[str, Any]:
        value = self.json(path)
        if not isinstance(value, dict):
            raise SpecError(f"{path} must hold a JSON object, not {type(value).__name__}")
        return value


def safetensors_header(files: Files, path: str) -> dict[str, dict[str, Any]]:
    """``{tensor: {"dtype", "shape"}}`` from a safetensors file's header (no tensor data is read)."""
    size = files.sizes[path]
    if size < 8:
        raise SpecError(f"{path} is too short to be a safetensors file")
    (length,) = struct.unpack("<Q", files.read(path, 0, 8))
    if length > MAX_HEADER or 8 + length > size:
        raise SpecError(f"{path} has a header length of {length} bytes, which does not fit the file")
    try:
        header = json.loads(files.read(path, 8, length))
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"{path} has a header that is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise SpecError(f"{path} has a header that is not a JSON object")
    header.pop("__metadata__", None)
    return {str(name): _shape(path, name, info) for name, info in header.items()}


def checkpoint_tensors(files: Files) -> dict[str, dict[str, Any]]:
    """Every tensor of the checkpoint, from the index's shards or from every ``*.safetensors`` file."""
    if files.has("model.safetensors.index.json"):
        weight_map = files.json_object("model.safetensors.index.json").get("weight_map") or {}
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise SpecError("model.safetensors.index.json: weight_map must map tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not files.has(s)]
        if missing:
            raise SpecError(f"model.safetensors.index.json names shards that are not in the fileset: {missing}")
    else:
        shards = sorted(p for p in files.sizes if p.endswith(".safetensors") and "/" not in p)
    tensors: dict[str, dict[str, Any]] = {}
    for shard in shards:
        tensors.update(safetensors_header(files, shard))
    return tensors


MAX_COUNT = 2**40
"""Largest count (layers, sizes, shape dimensions) taken from a checkpoint's files as plausible."""

_READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError,
                struct.error, ZeroDivisionError)
"""What malformed file contents can raise while they are read (the reader turns them into SpecError)."""


def _count(config: dict[str, Any], *keys: str, required: bool = False, minimum: int = 1) -> int | None:
    """The first of ``keys`` set in ``config`` as a whole number in [minimum, MAX_COUNT]; None when
    none is set. A value of the wrong type or out of range is a :class:`SpecError`."""
    value = _first(config, *keys)
    if value is None:
        if required:
            raise SpecError(f"config.json lacks {' / '.join(keys)}")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"config.json: {keys[0]} must be a whole number, not {type(value).__name__}")
    if not minimum <= value <= MAX_COUNT:
        raise SpecError(f"config.json: {keys[0]}={value if abs(value) < 10**15 else '…'} is out of range")
    return value


def _shape(path: str, tensor: str, info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise SpecError(f"{path}: the header entry of a tensor is not an object")
    shape, dtype = info.get("shape"), info.get("dtype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_COUNT for d in shape
    ):
        raise SpecError(f"{path}: a tensor's shape is not a list of sizes")
    if not isinstance(dtype, str):
        raise SpecError(f"{path}: a tensor's dtype is not a string")
    return {"dtype": dtype, "shape": shape}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model's settings under ``text_config``."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _chat_template(files: Files) -> str | None:
    """The chat template, or None: a tokenizer file that cannot be read only loses the template."""
    try:
        return _read_chat_template(files)
    except (SpecError, UnicodeDecodeError, *_READ_ERRORS) as exc:
        reason = str(exc) if isinstance(exc, SpecError) else f"unreadable ({type(exc).__name__})"
        log.info("chat template not read", extra={"reason": reason})
        return None


def _read_chat_template(files: Files) -> str | None:
    if files.has("chat_template.jinja"):
        return files.text("chat_template.jinja")
    if files.has("tokenizer_config.json"):
        template = files.json_object("tokenizer_config.json").get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {str(t.get("name")): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is not None and not isinstance(template, str):
            raise SpecError("tokenizer_config.json: chat_template must be a string or a list of named templates")
        return template
    return None


def linear_layers(tensors: dict[str, dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """Every 2-D ``*.weight`` of a Linear or Conv1D layer, with in/out the right way round."""
    layers = []
    for name, info in tensors.items():
        shape = info.get("shape") or []
        if not name.endswith(".weight") or len(shape) != 2 or _EMBEDDING.search(name.rsplit(".", 2)[-2]):
            continue
        if family == "gpt2" and _CONV1D.search(name):
            in_features, out_features = shape
        else:
            out_features, in_features = shape
        layers.append({"name": name[: -len(".weight")], "in_features": in_features, "out_features": out_features})
    return sorted(layers, key=lambda layer: _natural(layer["name"]))


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _precision(config: dict[str, Any], tensors: dict[str, dict[str, Any]]) -> str:
    declared = _first(config, "torch_dtype", "dtype")
    if isinstance(declared, str):
        return declared[:64]
    counts: dict[str, int] = {}
    for info in tensors.values():
        counts[info.get("dtype", "")] = counts.get(info.get("dtype", ""), 0) + math.prod(info.get("shape") or [1])
    common = max(counts, key=counts.__getitem__) if counts else "F32"
    return _DTYPE_NAMES.get(common, common.lower())


def _bytes_per_param(precision: str) -> float:
    return {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}.get(precision, 1 if "8" in precision else 2)


@contextlib.contextmanager
def _read_errors_as_spec_errors(kind: str) -> Iterator[None]:
    """Whatever malformed files make the readers raise becomes one :class:`SpecError` naming ``kind``."""
    article = "an" if kind[0] in "aeiou" else "a"
    try:
        yield
    except SpecError:
        raise
    except UnicodeDecodeError:
        raise SpecError(f"{article} {kind} file is not valid UTF-8") from None
    except _READ_ERRORS as exc:
        raise SpecError(f"the {kind} files could not be read ({type(exc).__name__})") from None


def inspect_checkpoint(files: Files, name: str) -> dict[str, Any]:
    """The ``ModelSpec`` fields this checkpoint determines. :class:`SpecError` if it cannot be read,
    whatever is wrong with the files (malformed JSON, wrong types, absurd sizes, a broken safetensors
    header); a fileset without ``config.json`` raises too (the caller logs it and leaves ``spec``
    empty). Errors of the storage itself are not caught here."""
    with _read_errors_as_spec_errors("checkpoint"):
        return _without_nul(_inspect_checkpoint(files, name))


def _inspect_checkpoint(files: Files, name: str) -> dict[str, Any]:
    if not files.has("config.json"):
        raise SpecError("the fileset has no config.json")
    config = _text_config(files.json_object("config.json"))
    family = str(config.get("model_type") or "unknown")[:100]
    tensors = checkpoint_tensors(files)
    num_layers = _count(config, "num_hidden_layers", "n_layer", "num_layers", required=True)
    hidden = _count(config, "hidden_size", "n_embd", "d_model", required=True)
    heads = _count(config, "num_attention_heads", "n_head", required=True)
    assert num_layers and hidden and heads
    kv_heads = _count(config, "num_key_value_heads", "n_head_kv") or heads
    ffn = _count(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    names = list(tensors)
    if tensors:
        tied = not any(n.endswith("lm_head.weight") for n in names)
        gated = any(re.search(r"(gate_proj|gate_up_proj|\.w1\.|\.w3\.)", n) for n in names)
    else:
        tied = config.get("tie_word_embeddings", family == "gpt2") is True
        gated = family not in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon")
    precision = _precision(config, tensors)
    template = _chat_template(files)
    spec: dict[str, Any] = {
        "checkpoint_model_name": name,
        "family": family,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "ffn_hidden_size": ffn,
        "vocab_size": _count(config, "vocab_size", minimum=0) or 0,
        "tied_embeddings": tied,
        "gated_mlp": gated,
        "precision": precision,
        "context_size": _count(config, "max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
        "is_chat": template is not None,
        "base_num_parameters": sum(math.prod(t.get("shape") or [1]) for t in tensors.values()),
        "linear_layers": linear_layers(tensors, family),
        "chat_template": template,
    }
    experts = _count(config, "num_local_experts", "num_experts", "n_routed_experts", minimum=0)
    if experts:
        spec["moe_config"] = {
            "num_experts": experts,
            "num_experts_per_tok": _count(config, "num_experts_per_tok", "top_k", "moe_topk") or 1,
            "num_expert_layers": num_layers,
            "expert_ffn_size": _count(config, "moe_intermediate_size", "expert_intermediate_size"),
            "num_shared_experts": _count(config, "n_shared_experts", "num_shared_experts", minimum=0) or 0,
        }
    if family in ("mamba", "mamba2", "jamba", "falcon_mamba", "nemotron_h", "zamba", "zamba2"):
        attention_layers = min(_count(config, "num_attention_layers", minimum=0) or 0, num_layers)
        spec["mamba_config"] = {
            "is_hybrid": family not in ("mamba", "mamba2", "falcon_mamba"),
            "num_mamba_layers": num_layers - attention_layers,
            "num_attention_layers": attention_layers,
            "state_size": _count(config, "state_size", "d_state", "mamba_d_state") or 16,
            "conv_kernel": _count(config, "conv_kernel", "d_conv", "mamba_d_conv") or 4,
        }
    window = config.get("sliding_window")
    if (isinstance(window, int) and not isinstance(window, bool) and 0 < window <= MAX_COUNT
            and config.get("use_sliding_window", True) is not False):
        spec["sliding_window_config"] = {"window_size": window}
    spec.update(gpu_estimates(spec))
    return spec


def _without_nul(value: Any) -> Any:
    """NUL characters dropped from every string (PostgreSQL can store none, even inside JSON)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def gpu_estimates(spec: dict[str, Any]) -> dict[str, int]:
    """The two GPU counts (formulas in the module docstring)."""
    per_param = _bytes_per_param(spec["precision"])
    weights = spec["base_num_parameters"] * per_param
    head_dim = spec["hidden_size"] // max(spec["num_attention_heads"], 1)
    kv_cache = 2 * spec["num_layers"] * spec["num_kv_heads"] * head_dim * SEQUENCE * per_param
    lora_params = LORA_RANK * sum(layer["in_features"] + layer["out_features"] for layer in spec["linear_layers"] or [])
    activations = spec["num_layers"] * SEQUENCE * spec["hidden_size"] * 34
    return {
        "minimum_gpus_all_weights": max(1, math.ceil((weights + kv_cache) * 1.2 / GPU_BYTES)),
        "minimum_gpus_lora": max(1, math.ceil((weights + lora_params * 16 + activations) * 1.2 / GPU_BYTES)),
    }


# ----- adapters --------------------------------------------------------------------------------

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class AdapterFacts:
    rank: int
    alpha: int | None
    peft_type: str
    use_dora: bool
    target_modules: list[str]
    shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # module -> {"A": shape, "B": shape}


def inspect_adapter(files: Files) -> AdapterFacts | None:
    """A PEFT adapter's facts, or None when the fileset has no ``adapter_config.json``;
    :class:`SpecError` when its files are malformed."""
    with _read_errors_as_spec_errors("adapter"):
        return _inspect_adapter(files)


def _inspect_adapter(files: Files) -> AdapterFacts | None:
    if not files.has("adapter_config.json"):
        return None
    config = files.json("adapter_config.json")
    if not isinstance(config, dict):
        raise SpecError("adapter_config.json must hold a JSON object")
    try:
        rank = int(config.get("r") or 0)
    except (TypeError, ValueError, OverflowError):
        rank = 0
    if not 0 <= rank <= MAX_COUNT:
        raise SpecError("adapter_config.json: r is out of range")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 1 <= alpha <= MAX_COUNT:
        alpha = None
    targets = config.get("target_modules") or []
    if not isinstance(targets, (str, list)) or not all(isinstance(t, str) for t in targets):
        raise SpecError("adapter_config.json: target_modules must be a string or a list of strings")
    facts = AdapterFacts(
        rank=rank, alpha=int(alpha) if alpha is not None else None,
        peft_type=str(config.get("peft_type") or "LORA")[:64].replace("\x00", ""),
        use_dora=config.get("use_dora") is True,
        target_modules=[targets] if isinstance(targets, str) else list(targets),
    )
    weights = next((p for p in ("adapter_model.safetensors",) if files.has(p)), None)
    if weights:
        for key, info in safetensors_header(files, weights).items():
            match = _LORA_KEY.match(key)
            if match:
                facts.shapes.setdefault(match.group("module"), {})[match.group("which")] = list(info.get("shape") or [])
    return facts


def incompatibilities(facts: AdapterFacts, layers: list[dict[str, Any]]) -> list[str]:
    """Why this adapter cannot run on a base with these ``linear_layers`` (empty when it can)."""
    by_name = {layer["name"]: layer for layer in layers}
    problems = []
    for module, shapes in sorted(facts.shapes.items(), key=lambda item: _natural(item[0])):
        layer = by_name.get(module)
        if layer is None:
            problems.append(f"{module} is not a linear layer of the base model")
            continue
        a, b = shapes.get("A"), shapes.get("B")
        if a is not None and (len(a) != 2 or a[1] != layer["in_features"]):
            problems.append(f"{module} expects in_features={layer['in_features']}, adapter has lora_A {a}")
        if b is not None and (len(b) != 2 or b[0] != layer["out_features"]):
            problems.append(f"{module} expects out_features={layer['out_features']}, adapter has lora_B {b}")
    return problems
