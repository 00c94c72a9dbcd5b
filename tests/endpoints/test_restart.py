"""The database is the source of truth: kill the server, start it again, and the endpoint comes back
with its adapters loaded and answering exactly as before: the killed server's engines kept serving
and are adopted by the new one (its replicas are rows), never started twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from together import Together

from modelyard.client import Modelyard
from tests.conftest import admin_key, free_port
from tests.endpoints.conftest import register
from tests.endpoints.test_serving import PROMPT, wait_for


def _serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_SUPERVISOR_INTERVAL": "0.5"}
    env.pop("MODELYARD_DATABASE_URL", None)
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url) or server.poll() is not None, 60, "the server")
    assert server.poll() is None, log.read_text()[-2000:]
    return server


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health").status_code == 200
    except httpx.HTTPError:
        return False


def _engine_pids(home: Path) -> set[int]:
    """Built-in engine processes serving a checkpoint under ``home``."""
    out = subprocess.run(["pgrep", "-f", f"modelyard.engine --model {home}"], capture_output=True, text=True, check=False).stdout
    return {int(p) for p in out.split()}


def test_kill_the_server_and_start_it_again(
    tmp_path: Path, fixture_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, port, log = tmp_path / "home", free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = _serve(home, port, log)
    monkeypatch.setenv("MODELYARD_API_KEY", admin_key(home))  # still valid after the restart below
    try:
        with Modelyard(url) as ours:
            register(ours, fixture_models)
        tg = Together(api_key=os.environ["MODELYARD_API_KEY"], base_url=url + "/v1", max_retries=0)
        oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=url + "/v1", max_retries=0)
        endpoint = tg.endpoints.create(model="tiny", hardware="cpu", autoscaling={"min_replicas": 1, "max_replicas": 1})
        wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="STARTED")
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")

        def answers() -> dict[str, str]:
            return {m: oa.chat.completions.create(model=m, messages=PROMPT, max_tokens=10, temperature=0)
                    .choices[0].message.content for m in ("pirate", "chef")}

        before = answers()
        engines = _engine_pids(home)
        assert len(engines) == 1
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert _engine_pids(home) == engines  # the replica outlives its owner

        server = _serve(home, port, log)
        # The state survives in the database, so it reads STARTED at once; until this server has adopted
        # the running replica, requests get 503 with Retry-After. Healthy replicas say when it serves.
        wait_for(lambda: (view := tg.endpoints.retrieve(endpoint.id)).state == "STARTED" and view.replicas == 1,
                 what="STARTED with its replica adopted after restart")
        assert [a.adapter_name for a in tg.endpoints.adapters.list(endpoint.id).data] == ["pirate", "chef"]
        assert answers() == before
        wait_for(lambda: "replica adopted" in log.read_text(), 30, "the replica adopted")
        time.sleep(1.0)
        assert _engine_pids(home) == engines, "the new server started another engine instead of adopting"
        assert tg.endpoints.retrieve(endpoint.id).replicas == 1
        assert answers() == before
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    wait_for(lambda: not _engine_pids(home), 30, "engines to stop with the server")
