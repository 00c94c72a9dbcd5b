"""Time from the attach call to the first streamed token of a request to the newly attached adapter.

Runs a real server with one running endpoint on the tiny fixture model (see serving_stack.py), then,
for each of ``--adapters`` adapters in turn: POST /v1/endpoints/{id}/adapters, and immediately a
streamed chat request to that adapter through the gateway; the clock stops at the first content
chunk. Each adapter is new to the engine, so the figure includes copying its fileset to the local
cache, our file checks, the engine's load, and routing.

Last line: ``attach_to_first_token_s=X.XXX`` (the median; target < 1 s on the tiny model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from serving_stack import serving_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    with serving_stack(adapters=args.adapters, max_loras=args.adapters) as stack:
        endpoint = stack.endpoint
        timings: list[tuple[float, float]] = []
        with httpx.Client(timeout=120) as http:
            for name in stack.adapters:
                started = time.perf_counter()
                stack.client.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:{name}")
                attached = time.perf_counter() - started
                body = {"model": name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                        "temperature": 0, "stream": True}
                with http.stream("POST", stack.url + "/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                            break
                timings.append((attached, time.perf_counter() - started))
    print(f"adapters={len(timings)} model=tiny-llama engine=builtin replicas=1")
    for name, (attached, first) in zip(stack.adapters, timings, strict=True):
        print(f"{name}  attach_s={attached:.3f}  attach_to_first_token_s={first:.3f}")
    firsts = [t for _, t in timings]
    print(f"median_attach_s={statistics.median(a for a, _ in timings):.3f} max_attach_to_first_token_s={max(firsts):.3f}")
    print(f"attach_to_first_token_s={statistics.median(firsts):.3f}")


if __name__ == "__main__":
    main()
