"""``engine: remote`` endpoints: OpenAI-compatible servers someone else runs, listed by URL.

The "remote" servers here are real built-in engine processes this module starts itself (serving the
fixture checkpoint under a name of their own); Modelyard checks them, loads and unloads adapters
through their runtime LoRA API, routes to them, and never starts or stops them. SQLite only, like
test_serving.py (the request rules run on both databases in test_router.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.engine.process import EngineProcess, builtin_command, free_port
from tests.conftest import AUTH, TRUSTED
from tests.endpoints.test_serving import PROMPT, ask, wait_for

SERVED = "tiny-remote"
"""The name the remote servers serve the base model under (not the endpoint's name)."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'remote.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.3, engine_start_timeout=5,
                    engine_max_failures=2)


@pytest.fixture(scope="module")
def servers(fixture_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProcess]]:
    """Two built-in engines started by hand, as someone else's servers would be."""
    logs = tmp_path_factory.mktemp("remote-engines")
    started: list[EngineProcess] = []
    try:
        for i in range(2):
            port = free_port()
            argv = builtin_command(str(fixture_models["base"]), served_name=SERVED, host="127.0.0.1", port=port,
                                   max_loras=4, max_lora_rank=16)
            started.append(EngineProcess(argv, f"http://127.0.0.1:{port}", logs / f"engine-{i}.log").start())
        for engine in started:
            engine.wait_healthy(120)
        yield started
    finally:
        for engine in started:
            engine.stop()


def direct(url: str, model: str) -> str:
    """What a server answers itself, for the same request the tests send through the gateway."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 10, "temperature": 0}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def loaded(url: str) -> set[str]:
    """Adapters a server has loaded (the models it lists with a ``parent``)."""
    return {m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"] if m.get("parent")}


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def create_remote(tg: Together, urls: list[str], **extra: object):
    return tg.endpoints.create(model="default/tiny", hardware="cpu",
                               autoscaling={"min_replicas": 1, "max_replicas": 1},
                               extra_body={"engine": "remote", "urls": urls, **extra})


def _oa(live_server: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)


def test_adapters_load_on_every_server_and_are_routed(registry: tuple[Modelyard, Together], live_server: str,
                                                      servers: list[EngineProcess]) -> None:
    _, tg = registry
    oa = _oa(live_server)
    urls = [s.url for s in servers]
    endpoint = create_remote(tg, urls)  # autoscaling 1/1 is ignored: one replica per URL
    assert endpoint.model_extra["engine"] == "remote" and endpoint.model_extra["urls"] == urls
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED"
             and tg.endpoints.retrieve(endpoint.id).model_extra["replicas"] == 2, timeout=30,
             what="STARTED with a replica per URL")
    assert tg.endpoints.retrieve(endpoint.id).model_extra["degraded"] is False

    # the base model: the servers serve it under their own name, which the gateway sends them
    base = direct(urls[0], SERVED)
    assert direct(urls[1], SERVED) == base
    for _ in range(4):  # whichever server the gateway picks
        assert ask(oa, endpoint.name) == base
    streamed = oa.chat.completions.create(model=endpoint.name, messages=PROMPT, max_tokens=10, temperature=0,
                                          stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == base

    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert [loaded(url) for url in urls] == [{"pirate"}, {"pirate"}]
    expected = direct(urls[0], "pirate")
    assert direct(urls[1], "pirate") == expected
    assert expected != base  # the adapter changes the answer
    for _ in range(4):  # whichever server the gateway picks
        assert ask(oa, "pirate") == expected
    assert ask(oa, f"{endpoint.name}:pirate") == expected

    tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert [loaded(url) for url in urls] == [set(), set()]
    with pytest.raises(openai.NotFoundError):
        ask(oa, "pirate")
    assert ask(oa, endpoint.name) == base

    tg.endpoints.delete(endpoint.id)
    assert all(s.alive() and healthy(s.url) for s in servers)  # not ours to stop


def test_a_dead_server_degrades_the_endpoint_then_errors_it(registry: tuple[Modelyard, Together],
                                                              live_server: str,
                                                              servers: list[EngineProcess]) -> None:
    """Last in this module: it kills the second server."""
    _, tg = registry
    oa = _oa(live_server)
    alive, victim = servers
    endpoint = create_remote(tg, [alive.url, victim.url])
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).model_extra["replicas"] == 2, timeout=30,
             what="a replica per URL")
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    expected = direct(alive.url, "chef")

    victim.stop(grace=0)
    seen: list[tuple[str, int, bool]] = []

    def degraded() -> bool:
        e = tg.endpoints.retrieve(endpoint.id)
        seen.append((e.state, e.model_extra["replicas"], e.model_extra["degraded"]))
        return e.model_extra["degraded"] and e.state == "STARTED" and e.model_extra["replicas"] == 1

    wait_for(degraded, timeout=15, what="degraded with one replica left")
    assert ("STARTED", 0, True) not in seen, seen
    assert ask(oa, "chef") == expected  # the other server still serves
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "ERROR", timeout=30, what="ERROR")
    error = tg.endpoints.retrieve(endpoint.id).model_extra["error"]
    assert error.startswith("engine failed to start:") and victim.url in error, error
    assert healthy(alive.url)  # ERROR forgets the live server without stopping it
    tg.endpoints.delete(endpoint.id)


def test_invalid_remote_endpoints_are_refused(registry: tuple[Modelyard, Together], live_server: str) -> None:
    ours, _ = registry
    base = {"model": "default/tiny", "hardware": "cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    cases = [
        ({"engine": "remote"}, "engine 'remote' needs `urls`"),
        ({"engine": "remote", "urls": []}, "engine 'remote' needs `urls`"),
        ({"engine": "remote", "urls": ["ftp://example.com/v1"]}, "is not an http(s) URL"),
        ({"engine": "remote", "urls": ["http://user:pw@example.com"]}, "no user:password@"),
        ({"engine": "remote", "urls": ["http://127.0.0.1:9"], "placement": "ray"}, "no `placement`"),
        ({"engine": "builtin", "urls": ["http://127.0.0.1:9"]}, "`urls` are for engine 'remote'"),
        ({"engine": "sglang"}, "unknown engine 'sglang'; known: builtin, vllm, remote"),
        ({"placement": "moon"}, "unknown placement 'moon'; known: local, ray"),
        ({"placement": "local", "resources": {"GPU": 1}}, "use placement 'ray'"),
        ({"placement": "ray", "resources": {"GPU": -1}}, "each amount in (0, 1000000]"),
    ]
    with httpx.Client(base_url=live_server, headers=AUTH(), timeout=30) as http:
        for extra, message in cases:
            response = http.post("/v1/endpoints", json={**base, **extra})
            assert response.status_code == 422, (extra, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_engine" and message in error["message"], (extra, error)
        malformed = http.post("/v1/endpoints", json={**base, "urls": "http://127.0.0.1:9"})  # not a list
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_request"

        # a remote endpoint needs no checkpoint files here: the servers hold their own copy
        ours.models.create("default", name="elsewhere")
        created = http.post("/v1/endpoints", json={**base, "model": "default/elsewhere", "engine": "remote",
                                                   "urls": ["http://127.0.0.1:9"]})
        assert created.status_code == 200, created.text
        assert http.delete(f"/v1/endpoints/{created.json()['id']}").status_code == 204
        no_files = http.post("/v1/endpoints", json={**base, "model": "default/elsewhere"})
        assert no_files.status_code == 400 and "has no fileset" in no_files.text
