"""Several ``modelyard serve`` processes on one PostgreSQL database: failover, attach propagation and
adapter-affinity routing, measured with the scale-out harness (``tests/scale/cluster.py``).

Builds the tiny fixture checkpoint and ``--adapters`` random rank-8 LoRA adapters (nothing
downloaded), then runs two clusters of three server processes, one after the other, each on a fresh
PostgreSQL database and moto S3 bucket:

1. ``MODELYARD_ROUTING=least_loaded`` (the baseline): an endpoint with 3 replicas (min = max = 3),
   every adapter attached, ``max_loras`` 4; ``--clients`` threads send ``--requests`` chat requests
   (``max_tokens`` ``--max-tokens``), each to one of the adapters picked uniformly with a fixed seed
   and through one of the three processes (also seeded). Completion tokens/s, CPU seconds per request
   of the server processes and of the engines (psutil), and each replica's LoRA slot loads and
   evictions (the engines' ``/metrics``) over the measured requests. Then the same with ``max_loras``
   = the adapter count (the control: every adapter stays resident everywhere, so any difference left
   between the two routings is not slot churn; ``--no-control`` skips it).
2. ``MODELYARD_ROUTING=adapter_affinity``: the same load on an identical fresh cluster; then, on a
   one-replica endpoint:

   - attach propagation: attach an adapter through A, then poll C with chat requests to it in a tight
     loop until one succeeds (the clock starts when the attach call returns), time one more request
     through C for comparison, then detach it; median over ``--attaches`` adapters;
   - failover: a client thread sends chat requests round-robin through the two processes that do not
     own the endpoint; the owner is killed with SIGKILL; the clock stops when the lease and the replica
     rows name another live process. On one machine a dead owner is noticed at once (its pid is gone),
     so the same is run again with the owner frozen by SIGSTOP (its pid stays, its lease must run out:
     the cross-machine case), then SIGKILLed after the adoption. Failed client requests are counted
     from the kill (or freeze) until the adoption.

Run from the repository root: ``.venv/bin/python bench/scale_out.py`` (needs PostgreSQL as the scale
tests do: ``MODELYARD_TEST_PG_URL``, default ``postgres@127.0.0.1:5432``).

Last line: ``failover_s=… failed_requests=… attach_propagation_ms=… affinity_speedup=…``
(``affinity_speedup`` = adapter-affinity tokens/s over least-loaded tokens/s).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx
import psutil
import sqlalchemy as sa

from modelyard.endpoints.pool import homes
from modelyard.engine.fixtures import DEFAULT_TARGETS, build_fixture_set, build_random_adapters
from tests.scale.cluster import Cluster, Server, engine_pids, wait_for

PROMPT = [{"role": "user", "content": "Tell me about the sea"}]
LEASE_SECONDS = 3.0


def build_models(root: Path, count: int) -> tuple[Path, dict[str, Path]]:
    base = build_fixture_set(root / "fixtures", adapters=())["base"]
    names = [f"lora-{i:02d}" for i in range(count)]
    dirs = build_random_adapters(base, [root / "adapters" / n for n in names], rank=8, targets=DEFAULT_TARGETS)
    return base, dict(zip(names, dirs, strict=True))


@dataclass
class Endpoint:
    id: str
    name: str


@dataclass
class LoadResult:
    requests: int = 0
    failed: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    engine_cpu_s: float = 0.0
    slots: dict[str, tuple[float, float]] = field(default_factory=dict)  # replica url -> (loads, evictions)
    per_replica_requests: dict[str, float] = field(default_factory=dict)
    homes: dict[str, int] = field(default_factory=dict)  # replica url -> adapters that hash to it

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


class BenchCluster(Cluster):
    """The harness, plus what the bench needs: many adapters, plain HTTP calls, one database engine."""

    _db: sa.Engine | None = None

    # ----- set-up ---------------------------------------------------------------------------------

    def http(self, server: Server, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=server.url, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    @property
    def db(self) -> sa.Engine:
        if self._db is None:
            self._db = sa.create_engine(self.database_url)
        return self._db

    def __exit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.dispose()
        super().__exit__(*exc)

    # ----- endpoints ------------------------------------------------------------------------------

    def create_endpoint(self, server: Server, replicas: int, max_loras: int = 4) -> Endpoint:
        with self.http(server) as http:
            response = http.post("/v1/endpoints", json={
                "model": "default/tiny", "hardware": "cpu", "max_loras": max_loras,
                "autoscaling": {"min_replicas": replicas, "max_replicas": replicas}})
            response.raise_for_status()
            ep = Endpoint(response.json()["id"], response.json()["name"])

            def started() -> bool:
                state = http.get(f"/v1/endpoints/{ep.id}").json()
                if state.get("state") == "ERROR":
                    raise SystemExit(f"endpoint {ep.id} failed: {state.get('error')}")
                return state.get("state") == "STARTED" and len(self.rows(ep.id)) == replicas

            wait_for(started, 300, f"{replicas} replica(s) STARTED", every=0.2)
        return ep

    def delete_endpoint(self, server: Server, ep: Endpoint) -> None:
        with self.http(server) as http:
            http.delete(f"/v1/endpoints/{ep.id}").raise_for_status()
        wait_for(lambda: not self.rows(ep.id), 60, "the replica rows gone")

    def attach(self, server: Server, ep: Endpoint, adapter: str) -> None:
        with self.http(server) as http:
            response = http.post(f"/v1/endpoints/{ep.id}/adapters", json={"model_id": f"{ep.name}:{adapter}"})
            if response.status_code != 200:
                raise SystemExit(f"attach {adapter} through {server.name}: {response.status_code} {response.text}")

    def detach(self, server: Server, ep: Endpoint, adapter: str) -> None:
        with self.http(server) as http:
            http.request("DELETE", f"/v1/endpoints/{ep.id}/adapters",
                         json={"model_id": f"{ep.name}:{adapter}"}).raise_for_status()

    # ----- the database's view --------------------------------------------------------------------

    def rows(self, endpoint_id: str) -> list[dict[str, object]]:
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT id, url, owner FROM endpoint_replicas WHERE endpoint_id = :id ORDER BY serial"),
                {"id": endpoint_id})]

    def owners(self, endpoint_id: str) -> tuple[str | None, set[str]]:
        """The lease's owner and the replica rows' owners."""
        with self.db.connect() as conn:
            lease = conn.execute(sa.text("SELECT owner FROM endpoint_leases WHERE endpoint_id = :id"),
                                 {"id": endpoint_id}).scalar()
        return lease, {str(r["owner"]) for r in self.rows(endpoint_id)}


def owner_pid(owner: str | None) -> int | None:
    parts = (owner or "").split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def chat(http: httpx.Client, adapter: str, max_tokens: int) -> int:
    """One chat request; its completion tokens (raises on any failure)."""
    response = http.post("/v1/chat/completions", json={
        "model": adapter, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def scrape(url: str) -> dict[str, float]:
    """The counters of one engine's /metrics that the bench reports."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for metric in ("modelyard_engine_lora_slot_loads_total", "modelyard_engine_lora_evictions_total",
                   "vllm:request_success_total"):
        values = [float(m) for m in re.findall(rf"^{re.escape(metric)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)]
        out[metric] = sum(values)
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


# ----- 3: throughput under random multi-adapter traffic --------------------------------------------

def run_load(cluster: BenchCluster, adapters: list[str], args: argparse.Namespace, max_loras: int) -> LoadResult:
    servers = cluster.servers
    ep = cluster.create_endpoint(servers[0], replicas=3, max_loras=max_loras)
    for name in adapters:
        cluster.attach(servers[0], ep, name)
    rows = cluster.rows(ep.id)
    urls = [str(r["url"]) for r in rows]
    result_homes = {u: 0 for u in urls}
    url_of = {str(r["id"]): str(r["url"]) for r in rows}
    for replica_id in homes(adapters, url_of).values():  # where adapter affinity sends each adapter
        result_homes[url_of[replica_id]] += 1
    server_pids = [s.proc.pid for s in servers if s.proc is not None]
    engines = sorted(engine_pids(str(cluster.root)))

    rng = random.Random(args.seed)
    plan = [(rng.choice(adapters), rng.randrange(len(servers))) for _ in range(args.requests + args.warmup)]
    warmup, measured = plan[:args.warmup], plan[args.warmup:]
    result = LoadResult(homes=result_homes)
    lock = threading.Lock()

    def drive(work: list[tuple[str, int]], record: bool) -> None:
        queue = iter(work)

        def worker() -> None:
            clients = [cluster.http(s) for s in servers]
            try:
                while True:
                    with lock:
                        item = next(queue, None)
                    if item is None:
                        return
                    adapter, which = item
                    try:
                        tokens = chat(clients[which], adapter, args.max_tokens)
                    except (httpx.HTTPError, KeyError, ValueError):
                        tokens = -1
                    if record:
                        with lock:
                            result.requests += 1
                            if tokens < 0:
                                result.failed += 1
                            else:
                                result.tokens += tokens
            finally:
                for c in clients:
                    c.close()

        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    drive(warmup, record=False)
    before = {u: scrape(u) for u in urls}
    cpu_servers, cpu_engines = cpu_seconds(server_pids), cpu_seconds(engines)
    started = time.perf_counter()
    drive(measured, record=True)
    result.wall_s = time.perf_counter() - started
    result.server_cpu_s = cpu_seconds(server_pids) - cpu_servers
    result.engine_cpu_s = cpu_seconds(engines) - cpu_engines
    for u in urls:
        after = scrape(u)
        delta = {k: after[k] - before[u][k] for k in after}
        result.slots[u] = (delta["modelyard_engine_lora_slot_loads_total"],
                           delta["modelyard_engine_lora_evictions_total"])
        result.per_replica_requests[u] = delta["vllm:request_success_total"]
    cluster.delete_endpoint(servers[0], ep)
    wait_for(lambda: not engine_pids(str(cluster.root)), 60, "the load endpoint's engines stopped")
    return result


def print_load(mode: str, r: LoadResult) -> None:
    per_req = max(r.requests, 1)
    print(f"[{mode}] requests={r.requests} failed={r.failed} completion_tokens={r.tokens} wall_s={r.wall_s:.2f} "
          f"tokens_per_s={r.tokens_per_s:.1f} requests_per_s={r.requests / r.wall_s:.2f} "
          f"server_cpu_ms_per_request={1000 * r.server_cpu_s / per_req:.1f} "
          f"engine_cpu_ms_per_request={1000 * r.engine_cpu_s / per_req:.1f}")
    for i, (url, (loads, evictions)) in enumerate(sorted(r.slots.items())):
        print(f"[{mode}]   replica {i} ({url}): adapters_homed_here={r.homes[url]} "
              f"requests={r.per_replica_requests[url]:.0f} "
              f"lora_slot_loads={loads:.0f} lora_evictions={evictions:.0f}")
    total_loads = sum(v[0] for v in r.slots.values())
    total_evictions = sum(v[1] for v in r.slots.values())
    print(f"[{mode}]   all replicas: lora_slot_loads={total_loads:.0f} lora_evictions={total_evictions:.0f}")


# ----- 2: attach through A, first success through C --------------------------------------------------

def attach_propagation(cluster: BenchCluster, ep: Endpoint,
                       adapters: list[str]) -> list[tuple[float, float, int, float]]:
    a, c = cluster.servers[0], cluster.servers[2]
    # (attach call s, attach return -> first success through C s, polls, the next request through C s)
    timings: list[tuple[float, float, int, float]] = []
    with cluster.http(c, timeout=30) as via_c:
        for name in adapters:
            started = time.perf_counter()
            cluster.attach(a, ep, name)
            attached = time.perf_counter()
            polls = 0
            while True:
                polls += 1
                try:
                    chat(via_c, name, 1)
                    break
                except httpx.HTTPError:
                    if time.perf_counter() - attached > 30:
                        raise SystemExit(f"adapter {name} never answered through C") from None
            first = time.perf_counter() - attached
            again = time.perf_counter()
            chat(via_c, name, 1)
            timings.append((attached - started, first, polls, time.perf_counter() - again))
            cluster.detach(a, ep, name)
    return timings


# ----- 1: failover under traffic ----------------------------------------------------------------------

@dataclass
class Failover:
    adopted_s: float
    window_requests: int
    window_failed: int
    after_failed: int
    after_requests: int
    old: str
    new: str
    reasons: list[str]


def failover(cluster: BenchCluster, ep: Endpoint, adapter: str, *, freeze: bool) -> Failover:
    owner = cluster.owner_server(ep.id)
    assert owner.proc is not None
    old_pid = owner.proc.pid
    others = [s for s in cluster.servers if s is not owner]
    results: list[tuple[float, bool]] = []
    reasons: list[str] = []
    killed_at = [time.monotonic()]
    stop = threading.Event()

    def client() -> None:
        https = [cluster.http(s, timeout=30) for s in others]
        i = 0
        while not stop.is_set():
            via = others[i % 2].name
            try:
                chat(https[i % 2], adapter, 4)
                ok = True
            except httpx.HTTPStatusError as exc:
                ok = False
                reasons.append(f"{time.monotonic() - killed_at[0]:+.3f}s via {via}: "
                               f"{exc.response.status_code} {exc.response.text[:300]}")
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                ok = False
                reasons.append(f"{time.monotonic() - killed_at[0]:+.3f}s via {via}: {exc!r}")
            i += 1
            results.append((time.monotonic(), ok))
        for h in https:
            h.close()

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    wait_for(lambda: len(results) >= 6, 30, "traffic before the kill")
    live = {s.proc.pid for s in others if s.proc is not None}
    killed = killed_at[0] = time.monotonic()
    if freeze:
        owner.proc.send_signal(signal.SIGSTOP)
    else:
        cluster.kill(owner)
    new = ""

    def adopted() -> bool:
        nonlocal new
        lease, row_owners = cluster.owners(ep.id)
        if owner_pid(lease) not in live or not row_owners or any(owner_pid(o) not in live for o in row_owners):
            return False
        new = lease or ""
        return True

    wait_for(adopted, 10 * cluster.lease_seconds, "the endpoint adopted by another process", every=0.02)
    adopted_at = time.monotonic()
    time.sleep(1.0)  # traffic after the adoption too
    stop.set()
    sender.join(60)
    if freeze:
        cluster.kill(owner)  # SIGKILL reaches a stopped process
    window = [ok for t, ok in results if killed <= t <= adopted_at]
    after = [ok for t, ok in results if t >= killed]
    return Failover(adopted_at - killed, len(window), window.count(False), after.count(False), len(after),
                    f"{owner.name}(pid {old_pid})",
                    next(f"{s.name}(pid {s.proc.pid})" for s in others if s.proc and s.proc.pid == owner_pid(new)),
                    reasons)


@contextlib.contextmanager
def keep_logs_on_failure(folder: Path) -> Iterator[None]:
    """On a failure, copy the servers' and moto's logs out of the temporary folder (and say where)."""
    try:
        yield
    except BaseException:
        keep = Path(tempfile.mkdtemp(prefix="modelyard-scale-bench-logs-"))
        for log_file in folder.glob("*.log"):
            shutil.copy(log_file, keep / log_file.name)
        print(f"the servers' logs are kept in {keep}", file=sys.stderr)
        raise


# ----- main -------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=12)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--requests", type=int, default=1200, help="measured requests per routing mode")
    parser.add_argument("--warmup", type=int, default=36)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--attaches", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control load (max_loras = the adapter count: no slot churn in either mode)")
    args = parser.parse_args()
    began = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="modelyard-scale-bench-") as tmp:
        root = Path(tmp)
        base, adapters = build_models(root, args.adapters)
        names = list(adapters)
        print(f"model=tiny-llama engine=builtin processes=3 adapters={len(names)} rank=8 max_loras=4 "
              f"replicas=3 clients={args.clients} requests={args.requests} max_tokens={args.max_tokens} "
              f"seed={args.seed} lease_seconds={LEASE_SECONDS:g} cpus={psutil.cpu_count()}", flush=True)

        loads: dict[str, LoadResult] = {}
        controls: dict[str, LoadResult] = {}
        for mode in ("least_loaded", "adapter_affinity"):
            (root / mode).mkdir()
            with BenchCluster(root / mode, size=3, lease_seconds=LEASE_SECONDS,
                              extra_env={"MODELYARD_ROUTING": mode, "MODELYARD_LOG_LEVEL": "WARNING"}) as cluster, \
                    keep_logs_on_failure(root / mode):
                cluster.register_checkpoint(base, adapters)
                loads[mode] = run_load(cluster, names, args, max_loras=4)
                print_load(mode, loads[mode])
                if args.control:  # every adapter resident in every replica: no slot churn either way
                    controls[mode] = run_load(cluster, names, args, max_loras=len(names))
                    print_load(f"{mode}, control max_loras={len(names)}", controls[mode])
                print(f"(elapsed {time.perf_counter() - began:.0f}s)", flush=True)
                if mode != "adapter_affinity":
                    continue

                a = cluster.servers[0]
                ep = cluster.create_endpoint(a, replicas=1)
                steady = names[0]
                cluster.attach(a, ep, steady)
                owner = cluster.owner_server(ep.id)
                with cluster.http(cluster.servers[2]) as via_c:
                    chat(via_c, steady, 1)
                    plain = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        chat(via_c, steady, 1)
                        plain.append(time.perf_counter() - t0)
                timings = attach_propagation(cluster, ep, names[1:1 + args.attaches])
                print(f"attach propagation (attach through A, poll chat through C; endpoint owned by {owner.name}):")
                for name, (call, seen, polls, again) in zip(names[1:], timings, strict=False):
                    print(f"  {name}  attach_call_ms={1000 * call:.1f}  attach_return_to_first_ok_through_C_ms="
                          f"{1000 * seen:.1f}  polls={polls}  next_request_through_C_ms={1000 * again:.1f}")
                propagation_ms = 1000 * statistics.median(t[1] for t in timings)
                print(f"median attach_propagation_ms={propagation_ms:.1f} "
                      f"max={1000 * max(t[1] for t in timings):.1f}; for reference, one chat request "
                      f"(max_tokens 1) through C to an adapter attached long before: median "
                      f"{1000 * statistics.median(plain):.1f} ms", flush=True)

                killed = failover(cluster, ep, steady, freeze=False)
                print(f"failover SIGKILL: owner {killed.old} -> {killed.new} in {killed.adopted_s:.3f}s; "
                      f"requests kill..adoption={killed.window_requests} failed={killed.window_failed}; "
                      f"failed after the kill (to +1s after adoption)={killed.after_failed}/{killed.after_requests}",
                      flush=True)
                for reason in killed.reasons:
                    print(f"  failed (time from the kill): {reason}")

                dead = next(s for s in cluster.servers if s.proc is not None and s.proc.poll() is not None)
                cluster.start(dead)  # three processes again for the frozen case
                frozen = failover(cluster, ep, steady, freeze=True)
                print(f"failover SIGSTOP (lease {LEASE_SECONDS:g}s must expire): owner {frozen.old} -> "
                      f"{frozen.new} in {frozen.adopted_s:.3f}s; requests freeze..adoption={frozen.window_requests} "
                      f"failed={frozen.window_failed}; failed after the freeze (to +1s after adoption)="
                      f"{frozen.after_failed}/{frozen.after_requests}", flush=True)
                for reason in frozen.reasons:
                    print(f"  failed (time from the freeze): {reason}")
                survivor = next(s for s in cluster.servers if s.proc is not None and s.proc.poll() is None)
                cluster.delete_endpoint(survivor, ep)
                wait_for(lambda root=root: not engine_pids(str(root)), 60, "the engines stopped")

        base_tps, aff_tps = loads["least_loaded"].tokens_per_s, loads["adapter_affinity"].tokens_per_s
        speedup = aff_tps / base_tps if base_tps else float("nan")
        print(f"tokens_per_s least_loaded={base_tps:.1f} adapter_affinity={aff_tps:.1f} ratio={speedup:.2f} "
              f"(elapsed {time.perf_counter() - began:.0f}s)")
        if controls:
            c_base, c_aff = controls["least_loaded"].tokens_per_s, controls["adapter_affinity"].tokens_per_s
            print(f"control (max_loras={len(names)}, no eviction needed) tokens_per_s least_loaded={c_base:.1f} "
                  f"adapter_affinity={c_aff:.1f} ratio={c_aff / c_base if c_base else float('nan'):.2f}")
        print(f"failover_frozen_s={frozen.adopted_s:.3f} failed_requests_frozen={frozen.window_failed} "
              f"(of {frozen.window_requests})")
        print(f"failover_s={killed.adopted_s:.3f} failed_requests={killed.window_failed} "
              f"attach_propagation_ms={propagation_ms:.1f} affinity_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
