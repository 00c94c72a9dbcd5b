"""Multi-LoRA throughput of the built-in engine: on real model shapes (``--shape NAME``, see
:data:`SHAPE_DOC`) against vLLM's CPU build, or (without ``--shape``) on a fixture model against peft.

Without ``--shape``:
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
import statistics
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


def off_main(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on a short-lived thread. Multi-threaded torch work (building
    checkpoints, the bandwidth probe) must not run on this thread before the engine serves: OpenMP
    would keep workers for it, and with more OpenMP threads than cores the engine's own workers
    sleep between matmuls (see ``Engine._run``). A finished thread's workers end with it."""
    result: list = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            result.append(function(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


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


def summary_index(runs: list) -> int:
    """The workload of the last line: the first mixed mode at batch 8 (the issue's target; the first
    batch size when 8 is not run), else the first workload."""
    batches = [batch for _, batch, *_ in runs]
    target = 8 if 8 in batches else batches[0]
    return next((i for i, (mode, batch, *_) in enumerate(runs) if mode.startswith("mixed") and batch == target), 0)


def profile_decode(engine: Engine, prompts: list[list[int]], adapters: list[str | None], max_tokens: int,
                   steps: int = 20) -> None:
    """Run one workload with ``torch.profiler`` over ``steps`` decode steps on the engine thread (after
    the first five) and print the operators that took the most time, by input shape, and the median
    step with and without the profiler (the bench reaches into the engine's decode step to do it)."""
    decode = engine._decode_static
    times: list[float] = []
    profiled: list[float] = []
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)

    def step() -> None:
        n = len(times) + len(profiled)
        if n == 5:
            profiler.__enter__()
        started = time.perf_counter()
        decode()
        (profiled if 5 <= n < 5 + steps else times).append(time.perf_counter() - started)
        if n == 4 + steps:
            profiler.__exit__(None, None, None)

    engine._decode_static = step  # the engine thread looks it up on every step
    try:
        engine_run(engine, prompts, adapters, max_tokens)
    finally:
        del engine._decode_static
    if len(profiled) < steps:
        print(f"  profile: the run had {len(times) + len(profiled)} decode steps, fewer than {steps + 5}")
        return
    table = profiler.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=40, max_shapes_column_width=60)
    print(table)
    print(f"  profile: {steps} decode steps, median {statistics.median(profiled) * 1e3:.1f} ms profiled, "
          f"{statistics.median(times) * 1e3:.1f} ms not; divide the table's totals by {steps} for a step")


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


def fixture_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the fixture model (>= 512)")
    parser.add_argument("--arch", default="llama", choices=["llama", *ARCHITECTURES],
                        help="fixture architecture (default: the original llama fixture)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM CPU comparison")
    args = parser.parse_args(argv)
    from modelyard.engine.vllm import vllm_python

    with_vllm = not args.no_vllm and vllm_python() != sys.executable
    n = args.requests
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        base, adapter_paths = off_main(build, Path(tmp), n, args.hidden, args.arch)
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


SHAPE_DOC = """Real model shapes: ``--shape NAME`` (gemma-3-270m, qwen2.5-0.5b, llama-3.2-1b).

A random-weight checkpoint with the model's exact config (built once under ``--work-dir``; a
tokenizer made locally, nothing downloaded) and rank-8 adapters on q/k/v/o. The built-in engine and
vLLM's CPU build (same dtype, over HTTP) run the same requests in the same run: every request
submitted at once, greedy, eos ignored, ``--max-tokens`` each; tokens/s = completion tokens / wall
time (prefill included). Modes: base, one (every row on one adapter), mixedN (rows spread over N
distinct adapters). Also printed: the memory-bandwidth bound, i.e. the weights a decode step must
read (every linear layer, lm_head included, plus the LoRA weights of the adapters in the batch)
divided by this machine's copy bandwidth (the best of probes before, between and after the engines),
and the fraction of it each engine reaches.
The last line is ``ours_vs_vllm_mixed=X ours_vs_bound=Y`` for the first mixed mode at batch 8 (the
issue's target; the first batch size when 8 is not run), first prompt length.

``--shared-prefix N``: every prompt starts with the same N tokens (a chat template's system prompt),
and both engines read them once per adapter before the timed runs, so their prefix caches hold them.
"""


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by a large tensor copy, the best of ``repeats``."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * 4 / best


def shape_workloads(modes: list[str], batches: list[int], prompt_lengths: list[int], names: list[str],
                    vocab: int, first_id: int,
                    shared: list[int] | None = None) -> list[tuple[str, int, int, list[list[int]], list[str | None]]]:
    gen = torch.Generator().manual_seed(0)
    shared = shared or []
    runs = []
    for prompt_tokens in prompt_lengths:
        for batch in batches:
            own = prompt_tokens - len(shared)
            prompts = [shared + torch.randint(first_id, vocab, (own,), generator=gen).tolist() for _ in range(batch)]
            for mode in modes:
                if mode == "base":
                    adapters: list[str | None] = [None] * batch
                elif mode == "one":
                    adapters = [names[0]] * batch
                else:
                    distinct = int(mode.removeprefix("mixed"))
                    adapters = [names[i % distinct] for i in range(batch)]
                runs.append((mode, batch, prompt_tokens, prompts, adapters))
    return runs


def vllm_shape_runs(base: Path, adapter_paths: list[Path], runs: list, max_tokens: int, dtype: str,
                    log: Path, repeats: int) -> list[float]:
    from modelyard.engine.vllm import start_vllm

    longest = max(len(r[3][0]) for r in runs) + max_tokens
    process = start_vllm(str(base), served_name="base", log_path=log, max_loras=len(adapter_paths), max_lora_rank=8,
                         max_model_len=longest, dtype=dtype, extra=["--max-num-seqs", str(max(r[1] for r in runs))])

    async def workload(client: EngineClient, prompts: list[list[int]], models: list[str], tokens: int) -> float:
        async def one(ids: list[int], model: str) -> int:
            body = {"model": model, "prompt": ids, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
            return (await client.create("/v1/completions", body))["usage"]["completion_tokens"]

        started = time.perf_counter()
        done = await asyncio.gather(*(one(ids, m) for ids, m in zip(prompts, models, strict=True)))
        return sum(done) / (time.perf_counter() - started)

    async def all_runs() -> list[float]:
        async with EngineClient(process.url) as client:
            names = [p.name for p in adapter_paths]
            for name, path in zip(names, adapter_paths, strict=True):
                await client.load_adapter(name, str(path), max_rank=8)
            # warm-up: every adapter into a slot, and the base and each adapter once over the first prompt
            await workload(client, [runs[0][3][0]] * (len(names) + 1), ["base", *names], 4)
            results = []
            for _mode, _batch, _plen, prompts, adapters in runs:
                models = [a or "base" for a in adapters]
                results.append(max([await workload(client, prompts, models, max_tokens) for _ in range(repeats)]))
            return results

    try:
        return asyncio.run(all_runs())
    finally:
        process.stop()


def shape_main(argv: list[str] | None = None) -> None:
    from modelyard.engine.fixtures import REAL_SHAPES, build_random_adapters, build_shape_model
    from modelyard.engine.vllm import vllm_python

    parser = argparse.ArgumentParser(description=SHAPE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, choices=sorted(REAL_SHAPES))
    parser.add_argument("--batch", default="8", help="comma-separated batch sizes (the full matrix: 1,8,32)")
    parser.add_argument("--prompt-tokens", default="128", help="comma-separated prompt lengths (full: 128,1024)")
    parser.add_argument("--modes", default="base,one,mixed4",
                        help="comma-separated: base, one, mixedN (N distinct adapters); full: base,one,mixed4,mixed16")
    parser.add_argument("--full", action="store_true", help="the whole matrix (long): batch 1,8,32, prompt 128,1024, "
                        "base,one,mixed4,mixed16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each workload (the best is kept)")
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "modelyard" / "bench-shapes",
                        help="where checkpoints and adapters are built (reused across runs)")
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM's CPU build")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed runs, profile 20 decode steps of the summary workload (torch.profiler)")
    parser.add_argument("--shared-prefix", type=int, default=0, metavar="N",
                        help="every prompt starts with the same N tokens (read once per adapter before timing)")
    args = parser.parse_args(argv)
    if args.full:
        args.batch, args.prompt_tokens, args.modes = "1,8,32", "128,1024", "base,one,mixed4,mixed16"
    batches = [int(b) for b in args.batch.split(",")]
    prompt_lengths = [int(p) for p in args.prompt_tokens.split(",")]
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ("base", "one") and not (mode.startswith("mixed") and mode[5:].isdigit()):
            parser.error(f"unknown mode {mode!r}")
    n_adapters = max([1] + [int(m[5:]) for m in modes if m.startswith("mixed")])
    with_vllm = not args.no_vllm and vllm_python() != sys.executable

    root = args.work_dir / args.shape
    started = time.perf_counter()
    base = off_main(build_shape_model, root / "base", args.shape)
    adapter_paths = off_main(build_random_adapters, base, [root / f"a{i:02d}" for i in range(n_adapters)])
    names = [p.name for p in adapter_paths]
    print(f"built {args.shape} and {n_adapters} adapters in {time.perf_counter() - started:.0f}s", flush=True)

    # The copy bandwidth moves with the host's other tenants (11.8-19.6 GB/s between runs on one machine):
    # probed before, between and after the engines, the best reading is the bound's
    probes = [off_main(copy_bandwidth)]
    engine = Engine(base, max_loras=n_adapters, max_lora_rank=8, max_batch=max(batches), dtype=args.dtype)
    engine.eos_token_ids = set()  # every request runs max_tokens, as vLLM's ignore_eos
    for name, path in zip(names, adapter_paths, strict=True):
        engine.load_adapter(name, str(path))
    element = torch.finfo(getattr(torch, args.dtype)).bits // 8
    base_bytes = sum(i * o * element for i, o in engine.layer_shapes.values())
    lora_per_adapter = sum(8 * (i + o) * element for m, (i, o) in engine.layer_shapes.items()
                           if m.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"))
    first_id = len(ARCHITECTURES[str(REAL_SHAPES[args.shape]["arch"])].special_tokens)
    if not 0 <= args.shared_prefix < min(prompt_lengths):
        parser.error("--shared-prefix must be below every prompt length")
    shared = torch.randint(first_id, engine.vocab_size, (args.shared_prefix,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    runs = shape_workloads(modes, batches, prompt_lengths, names, engine.vocab_size, first_id, shared)
    engine_run(engine, [runs[0][3][0]] * (len(names) + 1), [None, *names], 4)  # warm-up, as vLLM's
    ours = []
    for mode, batch, plen, prompts, adapters in runs:
        ours.append(max(engine_run(engine, prompts, adapters, args.max_tokens) for _ in range(args.repeats)))
        print(f"  ours {mode:<8} batch={batch:<3} prompt={plen:<5} tokens_per_s={ours[-1]:8.1f}", flush=True)
    if args.profile:
        mode, batch, plen, prompts, adapters = runs[summary_index(runs)]
        print(f"  profile of ours {mode} batch={batch} prompt={plen}:", flush=True)
        profile_decode(engine, prompts, adapters, args.max_tokens)
    head = engine.greedy_head
    print(f"  ours prefix cache: {engine.prefix.hits}/{engine.prefix.queried} prompt tokens reused; greedy head: "
          + (f"{head.screen} screen, {head.screened} tokens screened, {head.fallbacks} from the float32 head"
             if head else "off"), flush=True)
    engine.shutdown()
    del engine
    probes.append(off_main(copy_bandwidth))
    theirs: list[float | None] = [None] * len(runs)
    if with_vllm:
        with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
            theirs = vllm_shape_runs(base, adapter_paths, runs, args.max_tokens, args.dtype, Path(tmp) / "vllm.log",
                                     args.repeats)
        probes.append(off_main(copy_bandwidth))
    bandwidth = max(probes)

    print(f"shape={args.shape} dtype={args.dtype} max_tokens={args.max_tokens} threads={torch.get_num_threads()} "
          f"shared_prefix={args.shared_prefix}")
    print(f"weights read per decode step: {base_bytes / 1e9:.3f} GB (+{lora_per_adapter / 1e6:.1f} MB per distinct "
          f"adapter); copy bandwidth {bandwidth / 1e9:.1f} GB/s (best of "
          f"{'/'.join(f'{b / 1e9:.1f}' for b in probes)}); bound step {base_bytes / bandwidth * 1e3:.1f} ms")
    print(f"{'mode':<8} {'batch':>5} {'prompt':>6} {'ours':>8} {'vllm':>8} {'ours/vllm':>9} {'bound':>8} "
          f"{'ours/bound':>10} {'vllm/bound':>10}")
    fractions = []
    for (mode, batch, plen, _p, adapters), o, v in zip(runs, ours, theirs, strict=True):
        distinct = len({a for a in adapters if a})
        bound = batch / ((base_bytes + distinct * lora_per_adapter) / bandwidth)
        ratio = f"{o / v:9.2f}" if v else f"{'-':>9}"
        print(f"{mode:<8} {batch:>5} {plen:>6} {o:8.1f} {v or 0:8.1f} {ratio} {bound:8.1f} {o / bound:10.2f} "
              f"{(v or 0) / bound:10.2f}")
        fractions.append((o / v if v else float("nan"), o / bound))
    summary = fractions[summary_index(runs)]
    print(f"ours_vs_vllm_mixed={summary[0]:.2f} ours_vs_bound={summary[1]:.2f}")


def main() -> None:
    if any(a == "--shape" or a.startswith("--shape=") for a in sys.argv[1:]):
        shape_main()
    else:
        fixture_main()


if __name__ == "__main__":
    main()
