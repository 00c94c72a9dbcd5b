"""Spec extraction time on a 7B-shaped sharded checkpoint that costs no disk.

Builds a llama-7B-shaped checkpoint (32 layers, hidden 4096, ffn 11008, vocab 32000, bf16, two shards
and model.safetensors.index.json) whose shard files have real safetensors headers with the full tensor
shapes and offsets, and whose tensor data is left as holes (sparse files: 13.5 GB apparent size, a few
kilobytes on disk). Then runs the same spec extraction the server runs on model create, reading
through the local fileset store (range reads of the headers only), ``--runs`` times.

Last line: ``spec_extract_ms=N`` (the median; target under 200 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path

from modelyard.spec import Files, inspect_checkpoint
from modelyard.storage import open_store

HIDDEN, FFN, LAYERS, VOCAB, HEADS = 4096, 11008, 32, 32000, 32


def tensors() -> list[tuple[str, list[int]]]:
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.{m}.weight", [HIDDEN, HIDDEN]) for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        out += [(f"{p}.mlp.gate_proj.weight", [FFN, HIDDEN]), (f"{p}.mlp.up_proj.weight", [FFN, HIDDEN]),
                (f"{p}.mlp.down_proj.weight", [HIDDEN, FFN]),
                (f"{p}.input_layernorm.weight", [HIDDEN]), (f"{p}.post_attention_layernorm.weight", [HIDDEN])]
    return out + [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]


def write_sparse_shard(path: Path, items: list[tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    for name, shape in items:
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        out.truncate(8 + len(blob) + offset)  # the data: a hole


def build(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16", "tie_word_embeddings": False,
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}))
    items = tensors()
    half = len(items) // 2
    shards = {"model-00001-of-00002.safetensors": items[:half], "model-00002-of-00002.safetensors": items[half:]}
    weight_map = {}
    for shard, shard_items in shards.items():
        write_sparse_shard(folder / shard, shard_items)
        weight_map.update({name: shard for name, _ in shard_items})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-spec-") as tmp:
        home = Path(tmp)
        store = open_store(home, "default", "llama-7b", {"type": "local"})
        folder = Path(store.root)
        build(folder)
        sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        apparent = sum(sizes.values())
        on_disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
        files = Files(sizes=sizes, read=store.read_range)
        timings, spec = [], {}
        for _ in range(args.runs):
            started = time.perf_counter()
            spec = inspect_checkpoint(files, "llama-7b")
            timings.append((time.perf_counter() - started) * 1000)
    print(f"checkpoint: {apparent / 1e9:.1f} GB apparent, {on_disk / 1024:.0f} KiB on disk, 2 shards")
    print(f"spec: family={spec['family']} layers={spec['num_layers']} params={spec['base_num_parameters']:,} "
          f"linear_layers={len(spec['linear_layers'])} gpus_all_weights={spec['minimum_gpus_all_weights']} "
          f"gpus_lora={spec['minimum_gpus_lora']}")
    print(f"runs={args.runs} min_ms={min(timings):.1f} max_ms={max(timings):.1f}")
    print(f"spec_extract_ms={statistics.median(timings):.0f}")


if __name__ == "__main__":
    main()
