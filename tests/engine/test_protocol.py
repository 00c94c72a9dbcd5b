"""The engine protocol, driven through EngineClient (the gateway's code) against real engine processes.

The same tests run on the built-in engine (always) and on vLLM's CPU build (``make test-vllm``,
which builds vLLM's environment and sets ``MODELYARD_TEST_VLLM=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.engine.client import AdapterError, EngineClient, EngineError
from modelyard.engine.process import EngineProcess, builtin_command, free_port
from modelyard.engine.vllm import start_vllm, vllm_python

MAX_RANK = 8
PROMPT = "Tell me about"


def _vllm_param() -> Any:
    marks = [pytest.mark.vllm]
    if os.environ.get("MODELYARD_TEST_VLLM") != "1":
        marks.append(pytest.mark.skip(reason="vLLM protocol tests run under `make test-vllm`"))
    return pytest.param("vllm", marks=marks)


def _ray_param() -> Any:
    marks = [pytest.mark.ray]
    if os.environ.get("MODELYARD_TEST_RAY") != "1":
        marks.append(pytest.mark.skip(reason="Ray protocol tests run under `make test-ray`"))
    return pytest.param("ray", marks=marks)


@pytest.fixture(scope="module", params=["builtin", "remote", _vllm_param(), _ray_param()])
def engine_url(request: pytest.FixtureRequest, fixture_models: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One engine server, reached the way its backend reaches it: a child process (``builtin``,
    ``vllm``), a server someone else runs, checked and adopted by URL (``remote``), or a replica placed
    on a local Ray cluster (``ray``)."""
    logs = tmp_path_factory.mktemp("engine-logs")
    base = str(fixture_models["base"])
    if request.param == "vllm":
        assert Path(vllm_python()).exists(), "run `make vllm-env` first"
        process = start_vllm(base, served_name="tiny", log_path=logs / "vllm.log", max_loras=2,
                             max_lora_rank=MAX_RANK, max_model_len=512)
    elif request.param in ("remote", "ray"):
        yield from _through_backend(request.param, base, logs)
        return
    else:
        port = free_port()
        argv = builtin_command(base, served_name="tiny", host="127.0.0.1", port=port, max_loras=2,
                               max_lora_rank=MAX_RANK)
        process = EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=logs / "builtin.log").start()
        process.wait_healthy(120)
    try:
        yield process.url
    finally:
        process.stop()


def _through_backend(kind: str, base: str, logs: Path) -> Iterator[str]:
    """A replica launched (``ray``) or adopted (``remote``: a built-in engine this test starts, as
    someone else's server) by the backend, so its handle's URL is what the protocol tests drive."""
    from modelyard.config import Settings
    from modelyard.engine.backends import Backends, ReplicaSpec

    outside: EngineProcess | None = None
    url = None
    if kind == "remote":
        port = free_port()
        argv = builtin_command(base, served_name="tiny", host="127.0.0.1", port=port, max_loras=2,
                               max_lora_rank=MAX_RANK)
        outside = EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=logs / "remote.log").start()
        url = outside.url
    clusters = contextlib.ExitStack()  # a local Ray cluster for ``ray``, stopped with the replica
    ray_address = None
    if kind == "ray":
        from tests.engine.conftest import ray_cluster

        ray_address = clusters.enter_context(ray_cluster()).address
    settings = Settings(home=logs / "home", ray_address=ray_address)
    backends = Backends(settings)
    spec = ReplicaSpec(endpoint_id="endpoint-protocol", served_name="tiny", engine="builtin", serial=1,
                       model_path=base, max_loras=2, max_lora_rank=MAX_RANK, log_path=logs / f"{kind}.log",
                       url=url, start_timeout=120)
    try:
        handle = asyncio.run(backends.get(kind).launch(spec))
        try:
            assert handle.alive()
            yield handle.url
        finally:
            asyncio.run(handle.stop())
            asyncio.run(backends.close())
    finally:
        if outside is not None:
            outside.stop()
        clusters.close()


def run(coro_fn: Any) -> Any:
    return asyncio.run(coro_fn())


class CountingClient:
    """An EngineClient whose requests are counted, to prove a refused load never reached the engine."""

    def __init__(self, url: str) -> None:
        self.sent: list[str] = []

        async def hook(request: httpx.Request) -> None:
            self.sent.append(request.url.path)

        self.http = httpx.AsyncClient(timeout=120, event_hooks={"request": [hook]})
        self.engine = EngineClient(url, http=self.http)


def _completion(text_model: str) -> dict[str, Any]:
    return {"model": text_model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}


def test_load_generate_unload(engine_url: str, fixture_models: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with EngineClient(engine_url) as engine:
            assert await engine.health()
            assert [m["id"] for m in await engine.models()] == ["tiny"]
            base = (await engine.create("/v1/completions", _completion("tiny")))["choices"][0]["text"]

            await engine.load_adapter("pirate", str(fixture_models["pirate"]), max_rank=MAX_RANK)
            await engine.load_adapter("chef", str(fixture_models["chef"]), max_rank=MAX_RANK)
            listed = {m["id"]: m.get("parent") for m in await engine.models()}
            assert listed == {"tiny": None, "pirate": "tiny", "chef": "tiny"}
            pirate = await engine.create("/v1/completions", _completion("pirate"))
            chef = await engine.create("/v1/completions", _completion("chef"))
            texts = {base, pirate["choices"][0]["text"], chef["choices"][0]["text"]}
            assert len(texts) == 3, texts  # each adapter changes the greedy output
            assert pirate["model"] == "pirate" and pirate["usage"]["completion_tokens"] > 0

            await engine.unload_adapter("pirate")
            assert await engine.adapters() == {"chef"}
            with pytest.raises(EngineError) as missing:
                await engine.create("/v1/completions", _completion("pirate"))
            assert missing.value.status == 404
            with pytest.raises(EngineError) as gone:
                await engine.unload_adapter("pirate")
            assert gone.value.status in (400, 404)
            await engine.unload_adapter("chef")

    run(scenario)


def test_streaming_matches_non_streaming(engine_url: str, fixture_models: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with EngineClient(engine_url) as engine:
            await engine.load_adapter("space", str(fixture_models["space"]), max_rank=MAX_RANK)
            body = {"model": "space", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                    "temperature": 0}
            whole = (await engine.create("/v1/chat/completions", body))["choices"][0]["message"]["content"]
            pieces: list[str] = []
            async with engine.open("/v1/chat/completions", {**body, "stream": True}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        pieces.append(delta.get("content") or "")
            assert "".join(pieces) == whole and whole
            await engine.unload_adapter("space")

    run(scenario)


def test_bad_adapters_are_refused_before_the_engine_sees_them(
    engine_url: str, fixture_models: dict[str, Path], tmp_path: Path
) -> None:
    no_config = tmp_path / "no-config"
    shutil.copytree(fixture_models["pirate"], no_config)
    (no_config / "adapter_config.json").unlink()
    too_wide = tmp_path / "too-wide"
    shutil.copytree(fixture_models["pirate"], too_wide)
    config = json.loads((too_wide / "adapter_config.json").read_text())
    (too_wide / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))

    async def scenario() -> None:
        counting = CountingClient(engine_url)
        try:
            with pytest.raises(AdapterError, match="no adapter_config.json"):
                await counting.engine.load_adapter("broken", str(no_config), max_rank=MAX_RANK)
            with pytest.raises(AdapterError, match="rank 64, above this engine's max_lora_rank 8"):
                await counting.engine.load_adapter("wide", str(too_wide), max_rank=MAX_RANK)
            assert counting.sent == []
            assert await counting.engine.adapters() == set()
        finally:
            await counting.http.aclose()

    run(scenario)


def test_greedy_output_matches_the_in_process_engine(engine_url: str, fixture_models: dict[str, Path]) -> None:
    """vLLM (fp32) and our engine agree token for token on the fixture model and its adapters."""
    from modelyard.engine.core import Engine
    from tests.engine.conftest import run as run_in_process

    reference = Engine(fixture_models["base"], max_loras=3, max_lora_rank=MAX_RANK, served_name="tiny")
    try:
        for name in ("pirate", "chef"):
            reference.load_adapter(name, str(fixture_models[name]))
        expected = {(m, p): run_in_process(reference, p, None if m == "tiny" else m, max_tokens=12).text
                    for m in ("tiny", "pirate", "chef") for p in (PROMPT, "hello there")}
    finally:
        reference.shutdown()

    async def scenario() -> dict[tuple[str, str], str]:
        async with EngineClient(engine_url) as engine:
            for name in ("pirate", "chef"):
                await engine.load_adapter(name, str(fixture_models[name]), max_rank=MAX_RANK)
            try:
                return {key: (await engine.create("/v1/completions", {
                    "model": key[0], "prompt": key[1], "max_tokens": 12, "temperature": 0,
                }))["choices"][0]["text"] for key in expected}
            finally:
                for name in ("pirate", "chef"):
                    await engine.unload_adapter(name)

    assert run(scenario) == expected


def test_load_inplace_swaps_the_weights_under_a_name(engine_url: str, fixture_models: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with EngineClient(engine_url) as engine:
            await engine.load_adapter("pirate", str(fixture_models["pirate"]), max_rank=MAX_RANK)
            await engine.load_adapter("chef", str(fixture_models["chef"]), max_rank=MAX_RANK)
            chef = (await engine.create("/v1/completions", _completion("chef")))["choices"][0]["text"]
            before = (await engine.create("/v1/completions", _completion("pirate")))["choices"][0]["text"]
            assert before != chef
            with pytest.raises(EngineError, match="already been loaded"):
                await engine.load_adapter("pirate", str(fixture_models["chef"]), max_rank=MAX_RANK)
            await engine.load_adapter("pirate", str(fixture_models["chef"]), max_rank=MAX_RANK, inplace=True)
            after = (await engine.create("/v1/completions", _completion("pirate")))["choices"][0]["text"]
            assert after == chef
            assert await engine.adapters() == {"pirate", "chef"}
            for name in ("pirate", "chef"):
                await engine.unload_adapter(name)

    run(scenario)
