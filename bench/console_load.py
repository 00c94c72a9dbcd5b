"""Console load: server time of the console's main pages with 1,000 models and 200 adapters in the
workspace (target: every page under 300 ms).

It builds an app on a temporary home (SQLite unless --database-url is given; authentication on, the
pages read as the PlatformAdmin the server made), registers the models and adapters through the API
(the adapters on ten of the models, half of them on the first, which three STOPPED endpoints serve, so
the endpoints page lists many attachable adapters), signs in to the console and requests every page
--repeat times in-process (no socket: the time measured is the server's, from the request entering the
app to its last byte). It prints a table (median, p95 and max per page) and, last, ``worst_page_ms=…``:
the highest per-page median.

    .venv/bin/python bench/console_load.py [--models 1000] [--adapters 200] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MODELYARD_ALLOWED_HOSTS", "testserver")
os.environ.setdefault("MODELYARD_LOG_LEVEL", "WARNING")

from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.client.credentials import read_credentials
from modelyard.config import Settings
from modelyard.console import mount_console

WS = "bench"
TARGET_MS = 300.0


def seed(http: TestClient, models: int, adapters: int) -> str:
    """Register the data through the API; return the first endpoint's id."""
    def ok(response) -> dict:
        if response.status_code >= 300:
            raise SystemExit(f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else {}

    ok(http.post("/apis/entities/v2/workspaces", json={"name": WS}))
    ok(http.post(f"/apis/files/v2/workspaces/{WS}/filesets", json={"name": "adapter-files"}))
    ok(http.put(f"/apis/files/v2/workspaces/{WS}/filesets/adapter-files/-/README.md", content=b"bench"))
    ok(http.post(f"/apis/files/v2/workspaces/{WS}/filesets", json={"name": "checkpoint"}))
    with tempfile.TemporaryDirectory() as tmp:  # the built-in engine's tiny llama: real files, a real spec card
        from modelyard.engine.fixtures import build_base_model

        build_base_model(Path(tmp) / "base")
        for path in sorted((Path(tmp) / "base").iterdir()):
            if path.is_file():
                ok(http.put(f"/apis/files/v2/workspaces/{WS}/filesets/checkpoint/-/{path.name}",
                            content=path.read_bytes()))
    started = time.perf_counter()
    for i in range(models):  # the first ten carry files (an endpoint needs them), the rest are entries only
        body = {"name": f"model-{i:04d}", "description": f"bench model {i}"}
        if i < 10:
            body["fileset"] = f"{WS}/checkpoint"
        ok(http.post(f"/apis/models/v2/workspaces/{WS}/models", json=body))
    bases = [f"model-{i:04d}" for i in range(min(10, models))]
    for i in range(adapters):
        base = bases[0] if i % 2 == 0 else bases[i % len(bases)]
        ok(http.post(f"/apis/models/v2/workspaces/{WS}/adapters",
                     json={"name": f"adapter-{i:04d}", "model": f"{WS}/{base}", "fileset": f"{WS}/adapter-files",
                           "finetuning_type": "lora"}))
    endpoint_ids = []
    for _ in range(3):
        made = ok(http.post("/v1/endpoints", headers={"X-Modelyard-Workspace": WS},
                            json={"model": f"{WS}/{bases[0]}", "hardware": "cpu", "state": "STOPPED",
                                  "autoscaling": {"min_replicas": 1, "max_replicas": 1}}))
        endpoint_ids.append(made["id"])
    print(f"seeded {models} models, {adapters} adapters, 3 endpoints in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return endpoint_ids[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, database_url=args.database_url or f"sqlite:///{tmp}/console-bench.db",
                            log_level="WARNING")
        app = create_app(settings)
        mount_console(app)  # a no-op once the app mounts the console itself
        with TestClient(app) as http:
            key = read_credentials(home)["default"]["api_key"]
            http.headers["Authorization"] = f"Bearer {key}"
            seed(http, args.models, args.adapters)
            del http.headers["Authorization"]  # from here on, a browser: the console's cookie only
            page = http.get("/console/signin")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            signed = http.post("/console/signin", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
            assert signed.status_code == 303, signed.text
            pages = {
                "workspaces": "/console/workspaces",
                "models": f"/console/w/{WS}/models",
                "models (last page)": f"/console/w/{WS}/models?page={max(1, -(-args.models // 25))}",
                "models (filtered)": f"/console/w/{WS}/models?q=model-09",
                "adapters": f"/console/w/{WS}/adapters",
                "adapter": f"/console/w/{WS}/adapters/adapter-0000",
                "filesets": f"/console/w/{WS}/filesets",
                "fileset": f"/console/w/{WS}/filesets/adapter-files",
                "endpoints": f"/console/w/{WS}/endpoints",
                "playground": f"/console/w/{WS}/playground",
                "usage": f"/console/w/{WS}/usage?granularity=hour",
            }
            for url in pages.values():  # warm up (template compilation, caches)
                assert http.get(url).status_code == 200, url
            rows = []
            for name, url in pages.items():
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    response = http.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (url, response.status_code)
                times.sort()
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                rows.append((name, statistics.median(times), p95, times[-1], len(response.content)))

    print(f"{'page':<22} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'bytes':>8}")
    for name, median, p95, worst, size in rows:
        flag = "" if median < TARGET_MS else "  over target"
        print(f"{name:<22} {median:>10.1f} {p95:>8.1f} {worst:>8.1f} {size:>8}{flag}")
    worst = max(rows, key=lambda r: r[1])
    print(f"models={args.models} adapters={args.adapters} repeat={args.repeat} target_ms={TARGET_MS:.0f} "
          f"slowest_page={worst[0].replace(' ', '_')}")
    print(f"worst_page_ms={worst[1]:.1f}")


if __name__ == "__main__":
    main()
