"""Shared set-up for the serving benches: a real server process with one running LoRA endpoint.

Builds the tiny fixture model and adapters in a temporary home (nothing downloaded), starts
``modelyard serve`` on it, registers the model and ``adapters`` adapters through the SDK, creates a
one-replica endpoint and waits until it is STARTED.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelyard.client import Modelyard
from modelyard.client.client import upload_dir
from modelyard.endpoints.schemas import Endpoint
from modelyard.engine.fixtures import build_fixture_set
from modelyard.engine.process import free_port

TRAINED = ("pirate", "chef", "space")


@dataclass
class Stack:
    url: str
    home: Path
    client: Modelyard
    endpoint: Endpoint
    adapters: list[str]

    def replica_url(self) -> str:
        """The engine replica behind the endpoint (the URL its replica row records)."""
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{self.home / 'modelyard.db'}")
        with engine.connect() as conn:
            url = conn.execute(sa.text("SELECT url FROM endpoint_replicas WHERE endpoint_id = :id"),
                               {"id": self.endpoint.id}).scalar_one()
        engine.dispose()
        return str(url)


@contextmanager
def serving_stack(adapters: int = 3, max_loras: int = 4) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        home = Path(tmp) / "home"
        built = build_fixture_set(Path(tmp) / "fixtures", adapters=TRAINED)
        names = [f"adapter-{i:02d}" for i in range(adapters)]
        port = free_port()
        env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "WARNING",
               "MODELYARD_SUPERVISOR_INTERVAL": "0.5"}
        env.pop("MODELYARD_DATABASE_URL", None)
        server = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the bench server did not start")
                time.sleep(0.2)
            client = Modelyard(url, timeout=120)
            upload_dir(client, built["base"], "default", "tiny-files")
            for i, name in enumerate(names):  # the three trained adapters, uploaded under distinct names
                upload_dir(client, built[TRAINED[i % len(TRAINED)]], "default", f"{name}-files")
            client.models.create("default", name="tiny", fileset="default/tiny-files")
            for name in names:
                client.adapters.create("default", model="tiny", name=name, fileset=f"{name}-files",
                                       finetuning_type="lora")
            endpoint = client.endpoints.create(model="tiny", max_loras=max_loras)
            while (endpoint := client.endpoints.retrieve(endpoint.id)).state != "STARTED":
                if endpoint.state == "ERROR" or time.monotonic() > deadline + 120:
                    raise SystemExit(f"endpoint did not start: {endpoint.error}")
                time.sleep(0.2)
            yield Stack(url=url, home=home, client=client, endpoint=endpoint, adapters=names)
        finally:
            server.terminate()
            server.wait(timeout=60)
