"""Running endpoints: real engine processes, adapters attached and detached while they serve, requests
routed through the gateway, crashes, and scaling; with the official OpenAI and Together SDKs.

These start built-in engine processes, so they run on SQLite only (the rules are covered on both
databases in test_router.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import AUTH, TRUSTED

PROMPT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'serving.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def wait_for(predicate: Callable[[], object], timeout: float = 90.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_endpoint(tg: Together, **extra: object):
    autoscaling = extra.pop("autoscaling", {"min_replicas": 1, "max_replicas": 1})
    endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu", autoscaling=autoscaling,
                                   extra_body=extra or None)
    assert endpoint.state in ("PENDING", "STARTING")
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="endpoint STARTED")
    return tg.endpoints.retrieve(endpoint.id)


def ask(oa: openai.OpenAI, model: str, max_tokens: int = 10) -> str:
    response = oa.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0)
    assert response.model == model
    return response.choices[0].message.content


def pids(app: FastAPI, endpoint_id: str) -> list[int]:
    pool = app.state.supervisor.pools.get(endpoint_id)
    return [r.handle.pid for r in pool.replicas if r.alive()] if pool else []


def test_attach_route_stream_and_detach_with_the_official_sdks(registry: tuple[Modelyard, Together],
                                                               live_server: str) -> None:
    ours, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    base = ask(oa, endpoint.name)
    assert httpx.get(live_server + "/health").json()["engines"] == {"endpoints": 1, "replicas": 1,
                                                                   "requests_in_flight": 0}

    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    answers = {"base": base, "pirate": ask(oa, "pirate"), "chef": ask(oa, f"{endpoint.name}:chef")}
    assert len(set(answers.values())) == 3, answers
    assert ask(oa, f"{endpoint.name}:pirate") == answers["pirate"]

    # Together's SDK routes the same way
    via_together = tg.chat.completions.create(model="pirate", messages=PROMPT, max_tokens=10, temperature=0)
    assert via_together.choices[0].message.content == answers["pirate"]

    # streaming: chunks arrive as events, carry the requested model name, and add up to the same text
    chunks = list(oa.chat.completions.create(model="chef", messages=PROMPT, max_tokens=10, temperature=0,
                                             stream=True))
    assert all(c.model == "chef" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answers["chef"]
    streamed = tg.chat.completions.create(model=f"{endpoint.name}:pirate", messages=PROMPT, max_tokens=10,
                                          temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answers["pirate"]

    completion = oa.completions.create(model="pirate", prompt="Tell me about", max_tokens=5, temperature=0)
    assert completion.model == "pirate" and completion.usage.completion_tokens == 5

    listed = {m.id: getattr(m, "parent", None) for m in oa.models.list()}
    assert listed == {endpoint.name: None, "pirate": endpoint.name, "chef": endpoint.name}

    # the reference's inference-gateway prefix serves the same routes
    prefixed = httpx.post(f"{live_server}/apis/inference-gateway/v2/workspaces/default/openai/-/v1/chat/completions",
                          json={"model": "default/pirate", "messages": PROMPT, "max_tokens": 10, "temperature": 0},
                          headers=AUTH())
    assert prefixed.status_code == 200 and prefixed.json()["choices"][0]["message"]["content"] == answers["pirate"]

    tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    with pytest.raises(openai.NotFoundError) as gone:
        ask(oa, "pirate")
    assert gone.value.code == "model_not_found"
    assert ask(oa, "chef") == answers["chef"]

    # disabling an attached adapter unloads it from the engine; enabling loads it again
    ours.adapters.update("default", "chef", enabled=False)
    with pytest.raises(openai.NotFoundError):
        ask(oa, "chef")
    replica = app_replica(live_server)
    wait_for(lambda: "chef" not in engine_models(replica), what="chef unloaded from the engine")
    ours.adapters.update("default", "chef", enabled=True)
    wait_for(lambda: "chef" in engine_models(replica), what="chef loaded again")
    assert ask(oa, "chef") == answers["chef"]


_APPS: dict[str, FastAPI] = {}


@pytest.fixture(autouse=True)
def _remember_app(app: FastAPI, live_server: str) -> None:
    _APPS[live_server] = app


def app_replica(live_server: str) -> str:
    (pool,) = _APPS[live_server].state.supervisor.pools.values()
    return pool.replicas[0].url


def engine_models(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/v1/models", headers=AUTH()).json()["data"] if m.get("parent")}


def test_failed_loads_leave_nothing_attached(registry: tuple[Modelyard, Together], settings: Settings,
                                            live_server: str, fixture_models: dict[str, Path]) -> None:
    ours, tg = registry
    endpoint = start_endpoint(tg, max_lora_rank=4)  # the fixture adapters have rank 8
    with pytest.raises(Exception) as too_wide:
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert too_wide.value.status_code == 400
    assert "rank 8, above this engine's max_lora_rank 4" in too_wide.value.body["error"]["message"]

    ours.filesets.create("default", name="broken-files")  # an adapter without its adapter_config.json
    ours.filesets.upload_file("default", "broken-files", "adapter_model.safetensors",
                              fixture_models["chef"] / "adapter_model.safetensors")
    ours.adapters.create("default", model="tiny", name="broken", fileset="broken-files", finetuning_type="lora")
    with pytest.raises(Exception) as no_config:
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:broken")
    assert no_config.value.status_code == 400
    assert "no adapter_config.json" in no_config.value.body["error"]["message"]
    assert tg.endpoints.adapters.list(endpoint.id).data == []
    assert engine_models(app_replica(live_server)) == set()


def test_a_killed_replica_is_replaced_and_serves_the_same_adapters(app: FastAPI,
                                                                   registry: tuple[Modelyard, Together],
                                                                   live_server: str) -> None:
    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:space")
    before = ask(oa, "space")
    (pid,) = pids(app, endpoint.id)
    os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: [p for p in pids(app, endpoint.id) if p != pid], what="a new replica")
    assert new and tg.endpoints.retrieve(endpoint.id).state == "STARTED"
    assert ask(oa, "space") == before


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event(
    app: FastAPI, registry: tuple[Modelyard, Together], live_server: str
) -> None:
    """The client must be able to tell a cut answer from a short one: an error event, then [DONE]."""
    _, tg = registry
    endpoint = start_endpoint(tg)
    (pid,) = pids(app, endpoint.id)
    body = {"model": endpoint.name, "messages": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", live_server + "/v1/chat/completions", json=body, timeout=60,
                      headers=AUTH()) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                os.kill(pid, signal.SIGKILL)
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    error = json.loads(data[-2][6:])["error"]
    assert error["code"] == "engine_unavailable" and "stopped while streaming" in error["message"]


def _engines_under(home: Path) -> list[int]:
    """Pids of engine processes serving files under ``home``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"modelyard.engine" in cmdline and str(home).encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_a_server_stopping_while_a_replica_starts_leaves_no_engine(
    app: FastAPI, registry: tuple[Modelyard, Together], settings: Settings
) -> None:
    """Regression: an engine started by a start that was cancelled (server shutdown) was orphaned."""
    _, tg = registry
    tg.endpoints.create(model="default/tiny", hardware="cpu", autoscaling={"min_replicas": 1, "max_replicas": 1})
    wait_for(lambda: _engines_under(settings.home), what="an engine process starting")
    supervisor = app.state.supervisor
    assert not any(pool.replicas for pool in supervisor.pools.values())  # still starting: not a replica yet
    loop = supervisor._loop_task.get_loop()
    asyncio.run_coroutine_threadsafe(supervisor.stop(), loop).result(60)
    wait_for(lambda: not _engines_under(settings.home), timeout=15, what="no engine left")


def test_hot_swap_while_requests_flow(app: FastAPI, registry: tuple[Modelyard, Together], live_server: str) -> None:
    """Attach, detach and disable adapters (one that is serving, one that has served) while the base
    model streams a long answer and other adapters keep answering: no request fails."""
    ours, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    for name in ("pirate", "space", "chef"):
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:{name}")
    expected = ask(oa, "pirate")
    ask(oa, "chef")  # chef has served: its weights sit in an engine slot
    results: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def stream_of_requests() -> None:
        while not stop.is_set():
            try:
                results.append(ask(oa, "pirate"))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    def long_stream(model: str, out: list[tuple[str, str | None]]) -> None:
        try:
            stream = oa.chat.completions.create(model=model, messages=PROMPT, max_tokens=300, temperature=0,
                                                stream=True)
            text, reason = "", None
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    reason = chunk.choices[0].finish_reason or reason
            out.append((text, reason))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    base_out: list[tuple[str, str | None]] = []
    space_out: list[tuple[str, str | None]] = []
    streams = [threading.Thread(target=long_stream, args=(endpoint.name, base_out)),
               threading.Thread(target=long_stream, args=("space", space_out))]
    worker = threading.Thread(target=stream_of_requests)
    worker.start()
    for thread in streams:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 2, what="requests flowing")
        tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:chef")  # has served
        ours.adapters.update("default", "space", enabled=False)  # is serving right now
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")  # and back again
        count = len(results)
        wait_for(lambda: len(results) >= count + 2, what="more requests after the swap")
    finally:
        stop.set()
        worker.join(60)
        for thread in streams:
            thread.join(120)
    assert errors == [] and set(results) == {expected}
    assert [reason for _, reason in base_out + space_out] == ["length", "length"]
    assert ask(oa, "chef") != expected
    with pytest.raises(openai.NotFoundError):
        ask(oa, "space")


def test_stop_and_start_again(app: FastAPI, registry: tuple[Modelyard, Together], live_server: str) -> None:
    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    before = ask(oa, "chef")
    (pid,) = pids(app, endpoint.id)
    assert tg.endpoints.update(endpoint.id, state="STOPPED").state in ("STARTED", "STOPPING", "STOPPED")
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STOPPED", what="STOPPED")
    wait_for(lambda: not _alive(pid), what="the replica to exit")
    with pytest.raises(openai.APIStatusError) as unavailable:
        ask(oa, "chef")
    assert unavailable.value.status_code == 503
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")  # attached while stopped
    tg.endpoints.update(endpoint.id, state="STARTED")
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="STARTED again")
    assert ask(oa, "chef") == before  # the attachment survived and was loaded before STARTED
    assert ask(oa, "pirate") != before  # and the one attached while stopped was loaded at start
    (new_pid,) = pids(app, endpoint.id)
    tg.endpoints.delete(endpoint.id)  # stops its replicas before answering
    assert pids(app, endpoint.id) == [] and not _alive(new_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_model_that_cannot_start_goes_to_error(app: FastAPI, registry: tuple[Modelyard, Together],
                                                 settings: Settings, fixture_models: dict[str, Path]) -> None:
    ours, tg = registry
    settings.engine_max_failures = 2
    source = fixture_models["base"]
    ours.filesets.create("default", name="broken-base")
    for file in source.iterdir():
        data = b"not a safetensors file" if file.name == "model.safetensors" else file.read_bytes()
        ours.filesets.upload_file("default", "broken-base", file.name, data)
    ours.models.create("default", name="broken-base", fileset="default/broken-base")
    endpoint = tg.endpoints.create(model="broken-base", hardware="cpu",
                                   autoscaling={"min_replicas": 1, "max_replicas": 1})
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "ERROR", what="ERROR")
    error = tg.endpoints.retrieve(endpoint.id).model_extra["error"]
    assert "engine failed to start" in error and "exited with code" in error


def test_scales_out_under_load_and_back_in(app: FastAPI, registry: tuple[Modelyard, Together],
                                           settings: Settings, live_server: str) -> None:
    _, tg = registry
    settings.replica_target_in_flight = 1
    settings.scale_down_after = 1.0
    endpoint = start_endpoint(tg, autoscaling={"min_replicas": 1, "max_replicas": 2})
    body = {"model": endpoint.name, "prompt": "Tell me about", "max_tokens": 400, "temperature": 0}
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120, headers=AUTH()) as http:
            while not stop.is_set():
                http.post(live_server + "/v1/completions", json=body)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: tg.endpoints.retrieve(endpoint.id).model_extra["replicas"] == 2, what="a second replica")
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).model_extra["replicas"] == 1, what="back to one replica")


def _vllm_enabled() -> bool:
    return os.environ.get("MODELYARD_TEST_VLLM") == "1"


@pytest.mark.vllm
@pytest.mark.skipif(not _vllm_enabled(), reason="vLLM endpoints run under `make test-vllm`")
def test_a_vllm_endpoint_serves_attached_adapters(registry: tuple[Modelyard, Together], live_server: str) -> None:
    """The same endpoint flow with `engine: vllm`: the supervisor starts vLLM's CPU build, attaches
    load through vLLM's runtime LoRA API, and the gateway routes to it."""
    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu",
                                   autoscaling={"min_replicas": 1, "max_replicas": 1},
                                   extra_body={"engine": "vllm", "max_lora_rank": 8})
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state in ("STARTED", "ERROR"), timeout=300,
             what="the vLLM endpoint to start")
    assert tg.endpoints.retrieve(endpoint.id).state == "STARTED", tg.endpoints.retrieve(endpoint.id).model_extra
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    answers = {m: ask(oa, m) for m in (endpoint.name, "pirate", f"{endpoint.name}:chef")}
    assert len(set(answers.values())) == 3, answers
    tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    with pytest.raises(openai.NotFoundError):
        ask(oa, "pirate")
    tg.endpoints.delete(endpoint.id)


def test_inactive_endpoints_stop_themselves(app: FastAPI, registry: tuple[Modelyard, Together]) -> None:
    _, tg = registry
    endpoint = start_endpoint(tg, inactive_timeout=1)
    assert tg.endpoints.retrieve(endpoint.id).inactive_timeout == 1
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="STARTED")
    pool = app.state.supervisor.pools[endpoint.id]
    assert tg.endpoints.retrieve(endpoint.id).state == "STARTED"  # not idle for a minute yet
    pool.last_request -= 61  # as if the last request came a minute and a second ago
    app.state.supervisor.wake()
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STOPPED", what="STOPPED after inactivity")
    assert pids(app, endpoint.id) == []


def test_new_files_for_an_attached_adapter_are_swapped_in_without_a_gap(
    registry: tuple[Modelyard, Together], live_server: str, fixture_models: dict[str, Path]
) -> None:
    ours, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    pirate, chef = ask(oa, "pirate"), ask(oa, "chef")
    assert pirate != chef
    # retrain "pirate" into what chef says: upload chef's weights into pirate's fileset
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        ours.filesets.upload_file("default", "pirate-files", name, fixture_models["chef"] / name)
    seen: list[str] = []
    wait_for(lambda: seen.append(ask(oa, "pirate")) or seen[-1] == chef, what="the new weights to serve")
    assert set(seen) <= {pirate, chef}  # every request in between was served, by old or new weights


def test_scale_to_zero_and_back_on_demand(app: FastAPI, registry: tuple[Modelyard, Together],
                                          settings: Settings, live_server: str) -> None:
    _, tg = registry
    settings.scale_down_after = 1.0
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0, timeout=120)
    endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu",
                                   autoscaling={"min_replicas": 0, "max_replicas": 1})
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="STARTED with no replica")
    assert tg.endpoints.retrieve(endpoint.id).model_extra["replicas"] == 0 and pids(app, endpoint.id) == []
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    first = ask(oa, "pirate")  # held by the gateway while a replica starts, then served
    assert len(pids(app, endpoint.id)) == 1
    wait_for(lambda: pids(app, endpoint.id) == [], what="scale back to zero when idle")
    assert tg.endpoints.retrieve(endpoint.id).state == "STARTED"
    assert ask(oa, "pirate") == first


def test_a_replica_dead_before_answering_is_retried_on_the_other(
    app: FastAPI, registry: tuple[Modelyard, Together], live_server: str
) -> None:
    """A replica that died after the gateway picked it (it still looked alive) refuses the connection:
    the request goes to the other replica instead of failing."""
    _, tg = registry
    oa = openai.OpenAI(api_key=os.environ["MODELYARD_API_KEY"], base_url=live_server + "/v1", max_retries=0)
    endpoint = start_endpoint(tg, autoscaling={"min_replicas": 2, "max_replicas": 2})
    wait_for(lambda: len(pids(app, endpoint.id)) == 2, what="two replicas")
    before = ask(oa, endpoint.name)
    pool = app.state.supervisor.pools[endpoint.id]
    victim = pool.pick(None)  # the replica the next request for the base model is sent to
    os.kill(victim.handle.pid, signal.SIGKILL)
    victim.handle.process.proc.wait(10)
    victim.handle.alive = lambda: True  # the window before anyone notices the death
    try:
        assert ask(oa, endpoint.name) == before
        streamed = oa.chat.completions.create(model=endpoint.name, messages=PROMPT, max_tokens=10, temperature=0,
                                              stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == before
        wait_for(lambda: pool.in_flight == 0, timeout=10, what="the requests counted out")
        assert victim.in_flight == 0
    finally:
        del victim.handle.alive  # back to the real check: the supervisor replaces it
    wait_for(lambda: len(pids(app, endpoint.id)) == 2 and victim.handle.pid not in pids(app, endpoint.id),
             what="the dead replica replaced")


def test_an_endpoint_whose_only_replica_died_is_not_started_until_it_is_replaced(
    app: FastAPI, registry: tuple[Modelyard, Together], live_server: str
) -> None:
    _, tg = registry
    endpoint = start_endpoint(tg)
    (pid,) = pids(app, endpoint.id)
    assert tg.endpoints.retrieve(endpoint.id).model_extra.get("degraded") is False
    os.kill(pid, signal.SIGKILL)
    seen: list[tuple[str, int, bool]] = []

    def replaced() -> list[int]:
        e = tg.endpoints.retrieve(endpoint.id)
        seen.append((e.state, e.model_extra["replicas"], e.model_extra.get("degraded", False)))
        return [p for p in pids(app, endpoint.id) if p != pid]

    wait_for(lambda: not pids(app, endpoint.id), what="the replica gone")
    response = httpx.post(live_server + "/v1/chat/completions", json={"model": endpoint.name, "messages": PROMPT},
                          headers=AUTH())
    assert response.status_code == 503 and response.headers["retry-after"], response.text
    assert response.json()["error"]["code"] in ("endpoint_not_ready", "engine_unavailable")
    wait_for(replaced, what="a new replica")
    assert not [s for s in seen if s[0] == "STARTED" and s[1] == 0], seen
    assert ("STARTING", 0, True) in seen, seen
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", what="STARTED again")
    final = tg.endpoints.retrieve(endpoint.id)
    assert final.model_extra["replicas"] == 1 and final.model_extra["degraded"] is False
