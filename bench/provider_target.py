"""``gateway_overhead.py --target provider``: the gateway's own cost in front of a provider, against LiteLLM's.

One stand-in OpenAI backend (``standin.py``: answers at once) is reached three ways in the same run:
directly, through Modelyard (``modelyard serve``, auth on, metrics and usage on: a registry model whose
``api_endpoint`` is the stand-in, called by name through ``/v1/chat/completions`` with a non-admin key)
and through LiteLLM's proxy (``litellm --config``, with a master key, the same backend as its one
model). LiteLLM is installed in an environment of its own (``~/.cache/modelyard/litellm-env``, made
on first use), never in ours. The client is aiohttp with one connection per concurrent caller.

Rounds alternate between the three paths so drift on the machine hits all alike. Per concurrency
level it prints p50/p99 per path, the added p50/p99 over direct, requests per second, and each
gateway process's CPU time (user+system, its children included) per request. Last line:
``added_p50_ms=… cpu_ms_per_req=… vs_litellm_rps=…`` (Modelyard's added p50 at concurrency 1, its CPU
per request pooled over all levels, and its throughput over LiteLLM's at the highest level).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import psutil

from modelyard.engine.process import free_port

LITELLM_ENV = Path(os.environ.get("MODELYARD_LITELLM_ENV", Path.home() / ".cache/modelyard/litellm-env"))
HERE = Path(__file__).parent
MASTER_KEY = "sk-bench-master"
BODY = {"model": "standin", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def litellm_binary() -> Path:
    binary = LITELLM_ENV / "bin" / "litellm"
    if not binary.exists():
        print(f"installing LiteLLM's proxy into {LITELLM_ENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_ENV)], check=True)
        subprocess.run([str(LITELLM_ENV / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"],
                       check=True)
    return binary


def wait_up(url: str, proc: subprocess.Popen, what: str, headers: dict[str, str] | None = None,
            timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def processes(tmp: Path) -> Iterator[dict[str, tuple[str, psutil.Process | None, dict[str, str]]]]:
    started: list[subprocess.Popen] = []
    try:
        standin_port = free_port()
        standin = subprocess.Popen([sys.executable, str(HERE / "standin.py"), "--port", str(standin_port)])
        started.append(standin)
        standin_url = f"http://127.0.0.1:{standin_port}"
        wait_up(standin_url + "/v1/models", standin, "the stand-in backend")

        home, port = tmp / "home", free_port()
        env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "WARNING"}
        env.pop("MODELYARD_DATABASE_URL", None)
        ours = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(ours)
        ours_url = f"http://127.0.0.1:{port}"
        wait_up(ours_url + "/health", ours, "modelyard serve")
        key = _bench_key(ours_url, home, standin_url)

        config = tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: standin\n"
            "    litellm_params:\n"
            "      model: openai/standin-model\n"
            f"      api_base: {standin_url}/v1\n"
            "      api_key: sk-unused\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
            "litellm_settings:\n"
            "  set_verbose: false\n"
        )
        lport = free_port()
        litellm = subprocess.Popen([str(litellm_binary()), "--config", str(config), "--port", str(lport),
                                    "--host", "127.0.0.1", "--num_workers", "1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "LITELLM_LOG": "ERROR"})
        started.append(litellm)
        litellm_url = f"http://127.0.0.1:{lport}"
        wait_up(litellm_url + "/health/liveliness", litellm, "LiteLLM's proxy", timeout=300)
        yield {
            "direct": (standin_url + "/v1/chat/completions", None, {}),
            "modelyard": (ours_url + "/v1/chat/completions", psutil.Process(ours.pid),
                          {"Authorization": f"Bearer {key}"}),
            "litellm": (litellm_url + "/v1/chat/completions", psutil.Process(litellm.pid),
                        {"Authorization": f"Bearer {MASTER_KEY}"}),
        }
    finally:
        for proc in reversed(started):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _bench_key(url: str, home: Path, standin_url: str) -> str:
    """Register the stand-in as a model with an ``api_endpoint``; mint a non-admin key to call it with."""
    from modelyard.client import Modelyard
    from modelyard.client.credentials import read_credentials

    admin = (read_credentials(home).get("default") or {})["api_key"]
    with Modelyard(url, api_key=admin) as client:
        client._http.post(url + "/apis/models/v2/workspaces/default/models", json={
            "name": "standin", "api_endpoint": {"url": standin_url + "/v1", "model_id": "standin-model",
                                                "format": "openai"},
        }).raise_for_status()
        made = client._http.post(url + "/apis/auth/v2/access-keys", json={
            "name": "bench", "principal": "bench@example.com", "workspace": "default"})
        if made.status_code >= 400:  # an older key schema: a key of the admin's own
            made = client._http.post(url + "/apis/auth/v2/access-keys", json={"name": "bench"})
        made.raise_for_status()
        body = made.json()
        return body.get("token") or body.get("key") or body.get("access_key") or body["value"]


async def batch(url: str, headers: dict[str, str], concurrency: int, count: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with session.post(url, json=BODY, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}: {await response.text()}")
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began


def cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def q(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def main(levels: list[int], requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="modelyard-provider-bench-") as tmp, processes(Path(tmp)) as paths:
        for name, (url, _, headers) in paths.items():  # warm every path (connections, caches, imports)
            asyncio.run(batch(url, headers, 4, 50))
        results: dict[tuple[str, int], dict[str, list[float]]] = {}
        for level in levels:
            count = max(requests, level * 10)
            for _ in range(rounds):
                for name, (url, proc, headers) in paths.items():
                    before = cpu(proc)
                    latencies, wall = asyncio.run(batch(url, headers, level, count))
                    row = results.setdefault((name, level), {"lat": [], "wall": [], "cpu": [], "n": []})
                    row["lat"] += latencies
                    row["wall"].append(wall)
                    row["cpu"].append(cpu(proc) - before)
                    row["n"].append(count)
        print(f"{'path':<10} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'+p50':>7} {'+p99':>7} {'req/s':>8} {'cpu ms/req':>10}")
        summary: dict[tuple[str, int], dict[str, float]] = {}
        for level in levels:
            direct = results[("direct", level)]["lat"]
            for name in paths:
                row = results[(name, level)]
                n = sum(row["n"])
                s = {"p50": q(row["lat"], 0.5), "p99": q(row["lat"], 0.99), "rps": n / sum(row["wall"]),
                     "cpu": sum(row["cpu"]) / n * 1000}
                s["added_p50"], s["added_p99"] = s["p50"] - q(direct, 0.5), s["p99"] - q(direct, 0.99)
                summary[(name, level)] = s
                print(f"{name:<10} {level:>4} {s['p50']:>8.2f} {s['p99']:>8.2f} {s['added_p50']:>7.2f} "
                      f"{s['added_p99']:>7.2f} {s['rps']:>8.0f} {s['cpu'] if name != 'direct' else 0:>10.3f}")
        first, last = levels[0], levels[-1]
        pooled = statistics.fmean(summary[("modelyard", level)]["cpu"] for level in levels)
        print(f"litellm: added_p50_ms={summary[('litellm', first)]['added_p50']:.2f} "
              f"cpu_ms_per_req={statistics.fmean(summary[('litellm', lv)]['cpu'] for lv in levels):.3f}")
        print(f"added_p50_ms={summary[('modelyard', first)]['added_p50']:.2f} cpu_ms_per_req={pooled:.3f} "
              f"vs_litellm_rps={summary[('modelyard', last)]['rps'] / summary[('litellm', last)]['rps']:.2f}")
