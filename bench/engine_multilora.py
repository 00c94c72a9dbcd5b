"""Multi-LoRA throughput of the built-in engine against plain peft, on a model where arithmetic dominates.

16 concurrent requests (same prompt length, same max_tokens, greedy) on a fixture llama with
hidden size 1024 by default (``--hidden``; ``--arch`` picks another fixture architecture: llama3,
qwen2, gemma3 or mistral, whose sliding window is 16 positions), run five ways in one process:
  engine/base      all 16 on the base model
  engine/one       all 16 on one adapter
  engine/distinct  each on a different adapter (16 adapters resident)
  peft/set_adapter plain peft, one request at a time, set_adapter before each
  peft/mixed       peft's mixed-adapter batch: one generate() with adapter_names=[...]
  vllm/*           the same three engine workloads through vLLM's CPU build (fp32, over HTTP),
                   when its environment exists (``make vllm-env``); ``--no-vllm`` skips it
Prints tokens/s for each and the ratios; the last line is ``distinct/base=X.XX distinct/peft=Y.YY``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from modelyard.engine.client import EngineClient
from modelyard.engine.core import Engine, Generation, SamplingParams
from modelyard.engine.fixtures import (
    ADAPTER_TEXTS,
    ARCHITECTURES,
    TinyModelShape,
    build_adapter,
    build_base_model,
)


def build(root: Path, adapters: int, hidden: int = 512, arch: str = "llama") -> tuple[Path, list[Path]]:
    shape = TinyModelShape(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=4,
                           num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)
    base = build_base_model(root / "base", shape, arch=arch)
    texts = list(ADAPTER_TEXTS.values())
    paths = [build_adapter(base, root / f"a{i:02d}", texts[i % len(texts)], rank=8, steps=1, seed=i)
             for i in range(adapters)]
    return base, paths


def engine_run(engine: Engine, prompts: list[list[int]], adapters: list[str | None], max_tokens: int) -> float:
    """Submit every request at once; tokens/s until the last one finishes."""
    remaining = [len(prompts)]
    lock, finished = threading.Lock(), threading.Event()

    def emit(event: tuple) -> None:  # runs on the engine thread: must not block
        if event[0] in ("done", "error"):
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

    gens = [Generation(ids, adapter, SamplingParams(max_tokens=max_tokens, temperature=0.0), emit)
            for ids, adapter in zip(prompts, adapters, strict=True)]
    started = time.perf_counter()
    for gen in gens:
        engine.submit(gen)
    finished.wait()
    elapsed = time.perf_counter() - started
    return sum(g.completion_tokens for g in gens) / elapsed


def vllm_runs(base: Path, adapter_paths: list[Path], prompts: list[list[int]], max_tokens: int,
              log: Path) -> dict[str, float]:
    """The three engine workloads through vLLM's OpenAI server (requests sent together over HTTP)."""
    from modelyard.engine.vllm import start_vllm

    n = len(adapter_paths)
    process = start_vllm(str(base), served_name="base", log_path=log, max_loras=n, max_lora_rank=8,
                         max_model_len=512)

    async def workload(client: EngineClient, models: list[str]) -> float:
        async def one(ids: list[int], model: str) -> int:
            body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
            return (await client.create("/v1/completions", body))["usage"]["completion_tokens"]

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(ids, m) for ids, m in zip(prompts, models, strict=True)))
        return sum(tokens) / (time.perf_counter() - started)

    async def all_runs() -> dict[str, float]:
        async with EngineClient(process.url) as client:
            names = [p.name for p in adapter_paths]
            for name, path in zip(names, adapter_paths, strict=True):
                await client.load_adapter(name, str(path), max_rank=8)
            await workload(client, names)  # warm-up: vLLM moves each adapter into its GPU/CPU slots
            return {
                "vllm/base": await workload(client, ["base"] * n),
                "vllm/one": await workload(client, [names[0]] * n),
                "vllm/distinct": await workload(client, names),
            }

    try:
        return asyncio.run(all_runs())
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the fixture model (>= 512)")
    parser.add_argument("--arch", default="llama", choices=["llama", *ARCHITECTURES],
                        help="fixture architecture (default: the original llama fixture)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM CPU comparison")
    args = parser.parse_args()
    from modelyard.engine.vllm import vllm_python

    with_vllm = not args.no_vllm and vllm_python() != sys.executable
    n = args.requests
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        base, adapter_paths = build(Path(tmp), n, args.hidden, args.arch)
        names = [p.name for p in adapter_paths]
        engine = Engine(base, max_loras=n, max_lora_rank=8, max_batch=n)
        engine.eos_token_ids = set()  # every request runs max_tokens, as vLLM's ignore_eos and peft's min_new_tokens
        for name, path in zip(names, adapter_paths, strict=True):
            engine.load_adapter(name, str(path))
        vocab = engine.tokenizer.vocab_size
        gen = torch.Generator().manual_seed(0)
        first = len(ARCHITECTURES[args.arch].special_tokens) if args.arch in ARCHITECTURES else 3  # no special tokens
        prompts = [torch.randint(first, vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(n)]
        engine_run(engine, prompts[:2], [None, names[0]], 4)  # warm-up
        results = {
            "engine/base": engine_run(engine, prompts, [None] * n, args.max_tokens),
            "engine/one": engine_run(engine, prompts, [names[0]] * n, args.max_tokens),
            "engine/distinct": engine_run(engine, prompts, names, args.max_tokens),
        }
        # bytes a decode step must read: the base's linear weights, and the LoRA weights of the rows' adapters
        base_bytes = sum(i * o * 4 for i, o in engine.layer_shapes.values())
        lora_bytes = sum(layer.a[1:].numel() * 4 + layer.b[1:].numel() * 4 for layer in engine.bank.layers.values())
        engine.shutdown()

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(model, adapter_paths[0], adapter_name=names[0])
        for name, path in zip(names[1:], adapter_paths[1:], strict=True):
            peft_model.load_adapter(path, adapter_name=name)
        peft_model.eval()
        kwargs = {"max_new_tokens": args.max_tokens, "min_new_tokens": args.max_tokens, "do_sample": False,
                  "repetition_penalty": 1.0}  # qwen2's generation_config sets 1.05: the same work for every mode
        with torch.inference_mode():
            started = time.perf_counter()
            for ids, name in zip(prompts, names, strict=True):
                peft_model.set_adapter(name)
                peft_model.generate(input_ids=torch.tensor([ids]), **kwargs)
            results["peft/set_adapter"] = n * args.max_tokens / (time.perf_counter() - started)
            started = time.perf_counter()
            peft_model.generate(input_ids=torch.tensor(prompts), adapter_names=names, **kwargs)
            results["peft/mixed"] = n * args.max_tokens / (time.perf_counter() - started)
        del peft_model, model
        if with_vllm:
            results.update(vllm_runs(base, adapter_paths, prompts, args.max_tokens, Path(tmp) / "vllm.log"))

    print(f"arch={args.arch} requests={n} prompt_tokens={args.prompt_tokens} max_tokens={args.max_tokens} "
          f"hidden={args.hidden} layers=4")
    print(f"weights read per decode step: base {base_bytes / 2**20:.0f} MiB, {n} distinct adapters "
          f"{lora_bytes / 2**20:.0f} MiB ({lora_bytes / base_bytes:.2f} of the base)")
    for label, tps in results.items():
        print(f"{label:<18} tokens_per_s={tps:8.1f}")
    distinct = results["engine/distinct"]
    print(f"engine/distinct vs peft/mixed = {distinct / results['peft/mixed']:.2f}")
    if "vllm/distinct" in results:
        print(f"vllm distinct/base = {results['vllm/distinct'] / results['vllm/base']:.2f}  "
              f"engine/distinct vs vllm/distinct = {distinct / results['vllm/distinct']:.2f}")
    else:
        print("vllm: skipped (run `make vllm-env` to build vLLM's CPU environment)")
    print(f"distinct/base={distinct / results['engine/base']:.2f} distinct/peft={distinct / results['peft/set_adapter']:.2f}")


if __name__ == "__main__":
    main()
