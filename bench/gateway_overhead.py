"""Latency the gateway adds over calling the engine replica directly.

Runs a real server with one running endpoint (see serving_stack.py) and sends the same small
completion request (an attached adapter, 4 new tokens, greedy) two ways: straight to the engine
replica, and through the gateway by adapter name. Rounds alternate between the two paths so drift
on the machine hits both alike. At each concurrency level it prints p50 and p99 for each path and
their difference.

Last line: ``added_p50_ms=X.XX added_p99_ms=Y.YY`` (at concurrency 1, where the difference is the
gateway's own cost rather than queueing in the engine; both levels are printed above it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from serving_stack import serving_stack


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(http: httpx.AsyncClient, url: str, body: dict, concurrency: int, requests: int) -> list[float]:
    latencies: list[float] = []
    remaining = [requests]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            response = await http.post(url, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run(stack, levels: list[int], requests: int, rounds: int) -> dict[int, tuple[list[float], list[float]]]:
    engine = stack.replica_url()
    adapter = stack.adapters[0]
    stack.client.endpoints.adapters.add(stack.endpoint.id, model_id=f"{stack.endpoint.name}:{adapter}")
    body = {"model": adapter, "prompt": "Tell me about", "max_tokens": 4, "temperature": 0}
    results: dict[int, tuple[list[float], list[float]]] = {}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await measure(http, stack.url + "/v1/completions", body, 4, 20)  # warm-up
        await measure(http, engine + "/v1/completions", body, 4, 20)
        for concurrency in levels:
            direct: list[float] = []
            gateway: list[float] = []
            for _ in range(rounds):
                direct += await measure(http, engine + "/v1/completions", body, concurrency, requests // rounds)
                gateway += await measure(http, stack.url + "/v1/completions", body, concurrency, requests // rounds)
            results[concurrency] = (direct, gateway)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, default=400, help="per path and concurrency level")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with serving_stack(adapters=1) as stack:
        results = asyncio.run(run(stack, args.concurrency, args.requests, args.rounds))
    print("concurrency  path     p50_ms   p99_ms  (completion, 4 tokens, built-in engine, tiny model)")
    added: dict[int, tuple[float, float]] = {}
    for concurrency, (direct, gateway) in results.items():
        for label, values in (("engine", direct), ("gateway", gateway)):
            print(f"{concurrency:>11}  {label:<7} {quantile(values, 0.5) * 1000:8.2f} {quantile(values, 0.99) * 1000:8.2f}")
        added[concurrency] = ((quantile(gateway, 0.5) - quantile(direct, 0.5)) * 1000,
                              (quantile(gateway, 0.99) - quantile(direct, 0.99)) * 1000)
        print(f"{concurrency:>11}  added   {added[concurrency][0]:8.2f} {added[concurrency][1]:8.2f}"
              f"   (mean engine {statistics.mean(direct) * 1000:.2f} ms)")
    first = args.concurrency[0]
    print(f"added_p50_ms={added[first][0]:.2f} added_p99_ms={added[first][1]:.2f}")


if __name__ == "__main__":
    main()
