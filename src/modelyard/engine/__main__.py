"""``python -m modelyard.engine --model PATH --port P``: serve a checkpoint with runtime LoRA."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from modelyard.engine.core import Engine
from modelyard.engine.server import create_engine_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard.engine",
        description="Modelyard's built-in engine: one Hugging Face causal LM on the CPU, many LoRA adapters "
        "batched together, behind the OpenAI API and vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter.",
    )
    parser.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    parser.add_argument("--served-model-name", help="name clients use for the base model (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-loras", type=int, default=4, help="adapters resident in the batched weights")
    parser.add_argument("--max-cpu-loras", type=int, default=None, help="adapters kept parsed in memory (LRU)")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank accepted")
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and activations (bfloat16 halves the bytes a step reads; float32 is exact)")
    parser.add_argument("--kv-cache-bytes", type=int, default=None,
                        help="KV cache budget; requests that do not fit wait (default: half the available memory)")
    parser.add_argument("--prefill-chunk", type=int, default=512,
                        help="prompt tokens read per prefill pass; running requests decode between passes")
    parser.add_argument("--prefix-cache-bytes", type=int, default=None,
                        help="keys and values of prompt prefixes kept for prompts that start alike; 0 turns it off "
                        "(default: 512 MiB, at most a quarter of the KV cache budget)")
    parser.add_argument("--greedy-head", choices=["auto", "on", "off"], default="auto",
                        help="greedy tokens from a bfloat16 (AVX2 CPUs: float16) copy of the float32 output head, rescored "
                        "in float32 (the same tokens, half the head's bytes; auto: for heads of 16M weights and more)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's, the cores)")
    parser.add_argument("--orphan-timeout", type=float, default=None, metavar="SECONDS",
                        help="exit (as on SIGTERM) when no GET /health with the X-Modelyard-Owner header arrived "
                        "for this long: a replica whose owner vanished and nobody adopted (default: never)")
    args = parser.parse_args(argv)
    if args.orphan_timeout is not None and args.orphan_timeout <= 0:
        parser.error("--orphan-timeout must be positive")
    if args.prefill_chunk < 1:
        parser.error("--prefill-chunk must be at least 1")
    if args.prefix_cache_bytes is not None and args.prefix_cache_bytes < 0:
        parser.error("--prefix-cache-bytes must not be negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine(
        args.model, max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras, max_lora_rank=args.max_lora_rank,
        max_batch=args.max_batch, served_name=args.served_model_name, dtype=args.dtype,
        kv_cache_bytes=args.kv_cache_bytes, prefill_chunk=args.prefill_chunk,
        greedy_head={"auto": None, "on": True, "off": False}[args.greedy_head],
        prefix_cache_bytes=args.prefix_cache_bytes,
    )
    server: uvicorn.Server | None = None

    def orphaned() -> None:  # on the server's loop: the same graceful exit as SIGTERM's
        if server is not None:
            server.should_exit = True

    try:
        app = create_engine_app(engine, orphan_timeout=args.orphan_timeout, on_orphan=orphaned)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
        server.run()
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
