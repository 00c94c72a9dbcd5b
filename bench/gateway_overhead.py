"""Latency the gateway adds over calling the engine replica directly, and the server CPU that auth and
observability (metrics and usage records) cost.

Starts three real servers in the same run, each with one running endpoint (see serving_stack.py):
``bare`` (``MODELYARD_AUTH=off``, metrics and usage off), ``auth`` (auth on, metrics and usage off)
and ``full`` (auth, metrics and usage all on, the default). On the auth-on servers the bench reads the
PlatformAdmin key the server wrote to its ``MODELYARD_HOME/credentials``, and with it mints a
non-admin key (``bench@example.com``) whose default workspace is ``default``: the gateway requests
carry that key, as an OpenAI SDK would (no ``X-Modelyard-Workspace``).

Each server gets the same small completion request (an attached adapter, 4 new tokens, greedy) two
ways: straight to its engine replica, and through the gateway by adapter name. Rounds alternate
between the paths and between the two servers so drift on the machine hits all alike. At each
concurrency level it prints p50 and p99 per server and path and the gateway's added latency; then
the server process's own CPU time (user+system, not its engine's) per gateway request, for each mode,
measured over the gateway phases: raw, and less the server's background work (the supervisor), whose
rate is measured while the engine is called directly.

Last lines: ``added_p50_ms=X.XX added_p99_ms=Y.YY`` (``full``, at the first concurrency level, where
the difference is the gateway's own cost rather than queueing in the engine), then ``raw_…`` figures,
then ``cpu_bare_ms_per_request=… cpu_auth_ms_per_request=… cpu_full_ms_per_request=…
auth_cpu_ms_per_request=… observe_cpu_ms_per_request=…`` (all levels pooled, background work taken out).

``--target provider`` measures the gateway in front of a provider instead, against LiteLLM's proxy
(see provider_target.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import serving_stack as stack_module
from serving_stack import serving_stack

from modelyard.client import Modelyard
from modelyard.client.credentials import read_credentials

MODES = {
    "bare": {"MODELYARD_AUTH": "off", "MODELYARD_METRICS": "off", "MODELYARD_USAGE": "off"},
    "auth": {"MODELYARD_AUTH": "on", "MODELYARD_METRICS": "off", "MODELYARD_USAGE": "off"},
    "full": {"MODELYARD_AUTH": "on", "MODELYARD_METRICS": "on", "MODELYARD_USAGE": "on"},
}
BENCH_PRINCIPAL = "bench@example.com"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def server_process(url: str) -> psutil.Process:
    """The ``modelyard serve`` child of this process listening on ``url``'s port."""
    port = url.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        cmdline = child.cmdline()
        if "serve" in cmdline and port in cmdline:
            return child
    raise SystemExit(f"no server process found for {url}")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _keyed_client(url: str, **kwargs: object) -> Modelyard:
    """serving_stack's SDK client, with the key its server wrote (the home lies under tempfile.tempdir,
    which the bench points at a folder of its own while that stack starts)."""
    homes = list(Path(tempfile.gettempdir()).glob("modelyard-bench-*/home"))
    key = None
    for home in homes:
        key = (read_credentials(home).get("default") or {}).get("api_key") or key
    return Modelyard(url, api_key=key, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def stack_for(mode: str, root: Path):
    """A serving stack whose server runs with the mode's settings."""
    saved = {name: os.environ.get(name) for name in MODES[mode]}, tempfile.tempdir
    os.environ.update(MODES[mode])
    tempfile.tempdir = str(root)
    try:
        context = serving_stack(adapters=1)
        stack = context.__enter__()
    finally:
        tempfile.tempdir = saved[1]
        for name, value in saved[0].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield stack
    finally:
        context.__exit__(None, None, None)


async def measure(http: httpx.AsyncClient, url: str, body: dict, headers: dict, concurrency: int,
                  requests: int) -> list[float]:
    latencies: list[float] = []
    remaining = [requests]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            response = await http.post(url, json=body, headers=headers)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def prepare(stack, mode: str) -> dict:
    adapter = stack.adapters[0]
    stack.client.endpoints.adapters.add(stack.endpoint.id, model_id=f"{stack.endpoint.name}:{adapter}")
    headers: dict[str, str] = {}
    if MODES[mode]["MODELYARD_AUTH"] == "on":
        admin = (read_credentials(stack.home).get("default") or {}).get("api_key")
        if not admin:
            raise SystemExit(f"no key in {stack.home}/credentials")
        minted = httpx.post(stack.url + "/apis/auth/v2/access-keys", timeout=30,
                            headers={"Authorization": f"Bearer {admin}"},
                            json={"principal": BENCH_PRINCIPAL, "workspace": "default"})
        if minted.status_code < 300:
            headers = {"Authorization": f"Bearer {minted.json()['token']}"}
        else:  # fall back on the admin key (its default workspace is `default` too)
            print(f"minting a non-admin key failed ({minted.status_code}); using the admin key", flush=True)
            headers = {"Authorization": f"Bearer {admin}"}
    return {
        "engine": stack.replica_url() + "/v1/completions",
        "gateway": stack.url + "/v1/completions",
        "headers": headers,
        "proc": server_process(stack.url),
        "body": {"model": adapter, "prompt": "Tell me about", "max_tokens": 4, "temperature": 0},
    }


async def run(targets: dict[str, dict], levels: list[int], requests: int, rounds: int) -> dict:
    results: dict = {}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        for t in targets.values():  # warm-up
            await measure(http, t["gateway"], t["body"], t["headers"], 4, 20)
            await measure(http, t["engine"], t["body"], {}, 4, 20)
        for concurrency in levels:
            per_mode = {m: {"engine": [], "gateway": [], "cpu": 0.0, "n": 0, "idle_cpu": 0.0, "idle_s": 0.0,
                            "busy_s": 0.0} for m in targets}
            for r in range(rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for mode in order:
                    t, out = targets[mode], per_mode[mode]
                    before, started = cpu_seconds(t["proc"]), time.perf_counter()
                    out["engine"] += await measure(http, t["engine"], t["body"], {}, concurrency, requests // rounds)
                    out["idle_cpu"] += cpu_seconds(t["proc"]) - before  # the server's background work
                    out["idle_s"] += time.perf_counter() - started
                    before, started = cpu_seconds(t["proc"]), time.perf_counter()
                    out["gateway"] += await measure(http, t["gateway"], t["body"], t["headers"], concurrency,
                                                    requests // rounds)
                    out["cpu"] += cpu_seconds(t["proc"]) - before
                    out["busy_s"] += time.perf_counter() - started
                    out["n"] += requests // rounds
            results[concurrency] = per_mode
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, default=400, help="per server, path and concurrency level")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--target", choices=("engine", "provider"), default="engine",
                        help="engine: an endpoint replica (three server modes); provider: a stand-in provider, "
                             "direct vs Modelyard vs LiteLLM")
    args = parser.parse_args()
    if args.target == "provider":
        import provider_target

        provider_target.main(args.concurrency, args.requests, args.rounds)
        return
    original = stack_module.Modelyard
    stack_module.Modelyard = _keyed_client  # serving_stack's client must carry the auth-on server's key
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, contextlib.ExitStack() as stacks:
            targets = {}
            for mode in MODES:
                root = Path(tmp) / mode
                root.mkdir()
                targets[mode] = prepare(stacks.enter_context(stack_for(mode, root)), mode)
            results = asyncio.run(run(targets, args.concurrency, args.requests, args.rounds))
    finally:
        stack_module.Modelyard = original
    print("mode concurrency  path     p50_ms   p99_ms  (completion, 4 tokens, built-in engine, tiny model)")
    added: dict[tuple[str, int], tuple[float, float]] = {}
    cpu = {m: [0.0, 0] for m in MODES}  # server CPU less its background work, requests
    raw = {m: [0.0, 0] for m in MODES}
    for concurrency, per_mode in results.items():
        for mode, out in per_mode.items():
            direct, gateway = out["engine"], out["gateway"]
            for label, values in (("engine", direct), ("gateway", gateway)):
                print(f"{mode:<4} {concurrency:>11}  {label:<7} {quantile(values, 0.5) * 1000:8.2f} "
                      f"{quantile(values, 0.99) * 1000:8.2f}")
            added[mode, concurrency] = ((quantile(gateway, 0.5) - quantile(direct, 0.5)) * 1000,
                                        (quantile(gateway, 0.99) - quantile(direct, 0.99)) * 1000)
            print(f"{mode:<4} {concurrency:>11}  added   {added[mode, concurrency][0]:8.2f} "
                  f"{added[mode, concurrency][1]:8.2f}   (mean engine {statistics.mean(direct) * 1000:.2f} ms)")
            background = out["idle_cpu"] / out["idle_s"] * out["busy_s"]
            print(f"{mode:<4} {concurrency:>11}  server cpu {out['cpu'] / out['n'] * 1000:.3f} ms/request, "
                  f"{(out['cpu'] - background) / out['n'] * 1000:.3f} without its background work "
                  f"({out['idle_cpu'] / out['idle_s'] * 1000:.1f} ms/s while the engine was called directly)")
            cpu[mode][0] += out["cpu"] - background
            cpu[mode][1] += out["n"]
            raw[mode][0] += out["cpu"]
            raw[mode][1] += out["n"]
    bare, auth, full = (cpu[m][0] / cpu[m][1] * 1000 for m in MODES)
    raw_bare, raw_auth, raw_full = (raw[m][0] / raw[m][1] * 1000 for m in MODES)
    first = args.concurrency[0]
    print(f"added_p50_ms={added['full', first][0]:.2f} added_p99_ms={added['full', first][1]:.2f} "
          f"added_p50_ms_bare={added['bare', first][0]:.2f}")
    print(f"raw_cpu_bare_ms_per_request={raw_bare:.3f} raw_cpu_auth_ms_per_request={raw_auth:.3f} "
          f"raw_cpu_full_ms_per_request={raw_full:.3f} raw_observe_cpu_ms_per_request={raw_full - raw_auth:.3f}")
    print(f"cpu_bare_ms_per_request={bare:.3f} cpu_auth_ms_per_request={auth:.3f} cpu_full_ms_per_request={full:.3f} "
          f"auth_cpu_ms_per_request={auth - bare:.3f} observe_cpu_ms_per_request={full - auth:.3f}")


if __name__ == "__main__":
    main()
