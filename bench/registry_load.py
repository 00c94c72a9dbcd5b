"""Registry load: bounded concurrent creates, random GETs and filtered lists against a live server.

For each concurrency level (16 and 64 by default) it creates N models with one adapter each in a
fresh workspace, then does random GETs and filtered lists, printing requests/s and p50/p99 latency
per phase. Without --base-url it starts its own server (`modelyard serve`) on a temporary home,
SQLite unless --database-url is given, and stops it at the end.

Last line: ``get_rps=N create_rps=N list_rps=N`` at the highest concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx

from modelyard.engine.process import free_port


@contextmanager
def own_server(database_url: str | None) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as home:
        env = {**os.environ, "MODELYARD_HOME": home, "MODELYARD_LOG_LEVEL": "WARNING"}
        if database_url:
            env["MODELYARD_DATABASE_URL"] = database_url
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the bench server did not start")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


async def run_phase(
    concurrency: int, jobs: list[Callable[[], Awaitable[httpx.Response]]]
) -> tuple[float, list[float]]:
    """Run ``jobs`` with at most ``concurrency`` in flight; return (requests/s, latencies in s)."""
    queue: asyncio.Queue[Callable[[], Awaitable[httpx.Response]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            response = await job()
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 400:
                raise SystemExit(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(jobs) / (time.perf_counter() - started), latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def bench_level(url: str, concurrency: int, models: int, gets: int, lists: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        ws = f"bench-{concurrency}-{uuid.uuid4().hex[:6]}"
        (await http.post("/apis/entities/v2/workspaces", json={"name": ws})).raise_for_status()
        base = f"/apis/models/v2/workspaces/{ws}"

        def create(i: int) -> Callable[[], Awaitable[httpx.Response]]:
            async def go() -> httpx.Response:
                response = await http.post(f"{base}/models", json={
                    "name": f"model-{i:05d}", "project": f"proj-{i % 10}", "description": f"bench model {i}",
                })
                if response.status_code >= 400:
                    return response
                return await http.post(f"{base}/models/model-{i:05d}/adapters", json={
                    "name": f"adapter-{i:05d}", "fileset": f"adapters-{i:05d}", "finetuning_type": "lora",
                    "lora_config": {"rank": 8, "alpha": 16},
                })
            return go

        rng = random.Random(concurrency)

        def get() -> Callable[[], Awaitable[httpx.Response]]:
            i = rng.randrange(models)
            return lambda: http.get(f"{base}/models/model-{i:05d}")

        def list_() -> Callable[[], Awaitable[httpx.Response]]:
            choice = rng.randrange(3)
            if choice == 0:
                params = {"filter[project]": f"proj-{rng.randrange(10)}", "page_size": 20}
            elif choice == 1:
                params = {"filter[name][$like]": f"model-00{rng.randrange(10)}", "sort": "-name", "page_size": 50}
            else:
                params = {"filter[adapters]": "true", "page": rng.randrange(1, 10), "page_size": 20}
            return lambda: http.get(f"{base}/models", params=params)

        results: dict[str, float] = {}
        # each create job is two requests (model + adapter): rps counts both
        for phase, jobs, per_job in (
            ("create", [create(i) for i in range(models)], 2),
            ("get", [get() for _ in range(gets)], 1),
            ("list", [list_() for _ in range(lists)], 1),
        ):
            rps, latencies = await run_phase(concurrency, jobs)
            results[f"{phase}_rps"] = rps * per_job
            print(
                f"concurrency={concurrency:<3} phase={phase:<6} requests={len(jobs) * per_job:<6} "
                f"rps={rps * per_job:8.1f}  p50_ms={_pct(latencies, 0.50):7.2f}  p99_ms={_pct(latencies, 0.99):7.2f}",
                flush=True,
            )
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="bench this server instead of starting one")
    parser.add_argument("--database-url", help="database for the server this script starts (default SQLite)")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()

    def run(url: str) -> dict[str, float]:
        print(f"server={url} models={args.models} gets={args.gets} lists={args.lists}", flush=True)
        last: dict[str, float] = {}
        for level in args.concurrency:
            last = asyncio.run(bench_level(url, level, args.models, args.gets, args.lists))
        return last

    if args.base_url:
        last = run(args.base_url)
    else:
        with own_server(args.database_url) as url:
            last = run(url)
    print(f"get_rps={last['get_rps']:.0f} create_rps={last['create_rps']:.0f} list_rps={last['list_rps']:.0f}")


if __name__ == "__main__":
    main()
