"""Registry load: bounded concurrent creates, random GETs and filtered lists against a live server,
with auth off and on.

For each concurrency level (16 and 64 by default) it creates N models with one adapter each in a
fresh workspace (the adapters share one fileset made beforehand), then does random GETs and filtered lists, printing requests/s and p50/p99 latency
per phase. Without --base-url it starts two servers of its own (`modelyard serve`, each on a
temporary home, SQLite unless --database-url is given, which both then use), one with
``MODELYARD_AUTH=off`` and one with auth on, and runs every phase on both in turn (alternating which
goes first) so drift on the machine hits both alike. On the auth-on server the requests carry a
non-admin key (``bench@example.com``, minted with the PlatformAdmin key the server wrote to its
``MODELYARD_HOME/credentials``; it creates the workspace, so it is that workspace's Admin). For each
phase it also prints the server process's CPU time (user+system) per request, and at the end the
pooled CPU per request of each mode, their ratio and difference. With --base-url it benches that
one server as it is (the key from MODELYARD_API_KEY or the credentials file, if any).

Last lines: ``get_rps=N create_rps=N list_rps=N`` (auth on, highest concurrency; ``…_auth_off`` for
the other server), then ``cpu_off_ms_per_request=… cpu_on_ms_per_request=… ratio=…
auth_cpu_ms_per_request=…``.
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx
import psutil

from modelyard.client.credentials import load_api_key, read_credentials
from modelyard.engine.process import free_port

BENCH_PRINCIPAL = "bench@example.com"
ADAPTER_CONFIG = b'{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}'


@dataclass
class Target:
    """One server under test: its URL, the headers every request carries, its process (for CPU)."""

    mode: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    proc: psutil.Process | None = None

    def cpu(self) -> float:
        if self.proc is None:
            return 0.0
        times = self.proc.cpu_times()
        return times.user + times.system


@contextmanager
def own_server(database_url: str | None, auth: str = "on") -> Iterator[Target]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as home:
        env = {**os.environ, "MODELYARD_HOME": home, "MODELYARD_LOG_LEVEL": "WARNING", "MODELYARD_AUTH": auth}
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
            target = Target(auth, url, proc=psutil.Process(proc.pid))
            if auth == "on":
                admin = (read_credentials(home).get("default") or {}).get("api_key") or os.environ.get(
                    "MODELYARD_API_KEY")
                if not admin:
                    raise SystemExit(f"no key in {home}/credentials nor MODELYARD_API_KEY")
                minted = httpx.post(f"{url}/apis/auth/v2/access-keys", json={"principal": BENCH_PRINCIPAL},
                                    headers={"Authorization": f"Bearer {admin}"}, timeout=30)
                minted.raise_for_status()
                target.headers = {"Authorization": f"Bearer {minted.json()['token']}"}
            yield target
        finally:
            proc.terminate()
            proc.wait(timeout=20)


Job = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def run_phase(concurrency: int, jobs: list[Job], http: httpx.AsyncClient) -> tuple[float, list[float]]:
    """Run ``jobs`` with at most ``concurrency`` in flight; return (requests/s, latencies in s)."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
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
            try:
                response = await job(http)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # the server closed a kept-alive connection as the request went out (its keep-alive
                # timeout, when this client is starved of CPU): send it again, once, on a new one
                response = await job(http)
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 400:
                raise SystemExit(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(jobs) / (time.perf_counter() - started), latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def phase_jobs(base: str, concurrency: int, models: int, gets: int,
               lists: int) -> list[tuple[str, list[Job], int]]:
    """The three phases' jobs against workspace path ``base`` (the same sequence for every server);
    each job is called with the client to send its requests with."""

    def create(i: int) -> Job:
        async def go(http: httpx.AsyncClient) -> httpx.Response:
            response = await http.post(f"{base}/models", json={
                "name": f"model-{i:05d}", "project": f"proj-{i % 10}", "description": f"bench model {i}",
            })
            if response.status_code >= 400:
                return response
            return await http.post(f"{base}/models/model-{i:05d}/adapters", json={
                "name": f"adapter-{i:05d}", "fileset": "adapter-files", "finetuning_type": "lora",
                "lora_config": {"rank": 8, "alpha": 16},
            })
        return go

    rng = random.Random(concurrency)

    def get() -> Job:
        i = rng.randrange(models)
        return lambda http: http.get(f"{base}/models/model-{i:05d}")

    def list_() -> Job:
        choice = rng.randrange(3)
        if choice == 0:
            params = {"filter[project]": f"proj-{rng.randrange(10)}", "page_size": 20}
        elif choice == 1:
            params = {"filter[name][$like]": f"model-00{rng.randrange(10)}", "sort": "-name", "page_size": 50}
        else:
            params = {"filter[adapters]": "true", "page": rng.randrange(1, 10), "page_size": 20}
        return lambda http: http.get(f"{base}/models", params=params)

    # each create job is two requests (model + adapter): rps counts both
    return [
        ("create", [create(i) for i in range(models)], 2),
        ("get", [get() for _ in range(gets)], 1),
        ("list", [list_() for _ in range(lists)], 1),
    ]


async def bench_level(targets: list[Target], concurrency: int, models: int, gets: int, lists: int,
                      cpu: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """One concurrency level on every target, phase by phase (the targets take turns within a phase).
    Adds (server CPU s, requests) per mode to ``cpu``; returns each mode's rps per phase."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def client(target: Target) -> httpx.AsyncClient:
        # one per phase: a connection left idle while the other server runs its phase would be closed
        # by the server's keep-alive timeout under the client's feet
        return httpx.AsyncClient(base_url=target.url, headers=target.headers, limits=limits, timeout=120)

    plans = []
    for target in targets:
        async with client(target) as http:
            ws = f"bench-{concurrency}-{uuid.uuid4().hex[:6]}"
            (await http.post("/apis/entities/v2/workspaces", json={"name": ws})).raise_for_status()
            # adapters must name a fileset that exists: one, made here, serves them all
            files = f"/apis/files/v2/workspaces/{ws}/filesets"
            (await http.post(files, json={"name": "adapter-files"})).raise_for_status()
            (await http.put(f"{files}/adapter-files/-/adapter_config.json", content=ADAPTER_CONFIG)).raise_for_status()
            base = f"/apis/models/v2/workspaces/{ws}"
        plans.append((target, phase_jobs(base, concurrency, models, gets, lists)))

    results: dict[str, dict[str, float]] = {t.mode: {} for t in targets}
    for index in range(3):
        order = plans if (concurrency + index) % 2 == 0 else list(reversed(plans))
        for target, phases in order:
            phase, jobs, per_job = phases[index]
            before = target.cpu()
            async with client(target) as http:
                rps, latencies = await run_phase(concurrency, jobs, http)
            spent = target.cpu() - before
            requests = len(jobs) * per_job
            cpu.setdefault(target.mode, [0.0, 0])
            cpu[target.mode][0] += spent
            cpu[target.mode][1] += requests
            results[target.mode][f"{phase}_rps"] = rps * per_job
            cpu_note = f"  cpu_ms_per_req={spent / requests * 1000:6.3f}" if target.proc else ""
            print(
                f"auth={target.mode:<3} concurrency={concurrency:<3} phase={phase:<6} requests={requests:<6} "
                f"rps={rps * per_job:8.1f}  p50_ms={_pct(latencies, 0.50):7.2f}  "
                f"p99_ms={_pct(latencies, 0.99):7.2f}{cpu_note}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="bench this server instead of starting two")
    parser.add_argument("--database-url", help="database for the servers this script starts (default SQLite)")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()

    def run(targets: list[Target]) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
        for target in targets:
            print(f"auth={target.mode} server={target.url} models={args.models} gets={args.gets} "
                  f"lists={args.lists}", flush=True)
        last: dict[str, dict[str, float]] = {}
        cpu: dict[str, list[float]] = {}
        for level in args.concurrency:
            last = asyncio.run(bench_level(targets, level, args.models, args.gets, args.lists, cpu))
        return last, cpu

    if args.base_url:
        key = os.environ.get("MODELYARD_API_KEY") or load_api_key(args.base_url)
        target = Target("?", args.base_url, headers={"Authorization": f"Bearer {key}"} if key else {})
        last, _ = run([target])
        result = last["?"]
        print(f"get_rps={result['get_rps']:.0f} create_rps={result['create_rps']:.0f} "
              f"list_rps={result['list_rps']:.0f}")
        return
    with ExitStack() as servers:
        targets = [servers.enter_context(own_server(args.database_url, auth)) for auth in ("off", "on")]
        last, cpu = run(targets)
    on, off = last["on"], last["off"]
    print(f"get_rps={on['get_rps']:.0f} create_rps={on['create_rps']:.0f} list_rps={on['list_rps']:.0f} "
          f"get_rps_auth_off={off['get_rps']:.0f} create_rps_auth_off={off['create_rps']:.0f} "
          f"list_rps_auth_off={off['list_rps']:.0f}")
    cpu_off, cpu_on = (cpu[m][0] / cpu[m][1] * 1000 for m in ("off", "on"))
    print(f"cpu_off_ms_per_request={cpu_off:.3f} cpu_on_ms_per_request={cpu_on:.3f} ratio={cpu_on / cpu_off:.3f} "
          f"auth_cpu_ms_per_request={cpu_on - cpu_off:.3f}")


if __name__ == "__main__":
    main()
