"""Three server processes on one PostgreSQL database and a moto S3 server act as one service.

Create an endpoint through A, attach through B, chat through C (the official SDKs), detach through C
and see it gone through A within a second; then ``kill -9`` the process that owns the endpoint while
a client keeps sending requests through the other two: they keep succeeding, another process adopts
the replica, and there is never more than one engine process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from together import Together

from tests.scale.cluster import Cluster, engine_pids, wait_for

pytestmark = pytest.mark.postgres
PROMPT = [{"role": "user", "content": "Tell me about the sea"}]


def ask(oa: openai.OpenAI, model: str) -> str:
    response = oa.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)
    assert response.model == model
    return response.choices[0].message.content or ""


def engine_adapters(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/v1/models").json()["data"] if m.get("parent")}


def test_three_processes_serve_as_one(tmp_path: Path, fixture_models: dict[str, Path]) -> None:
    with Cluster(tmp_path, size=3, lease_seconds=3.0) as cluster:
        cluster.register(fixture_models)
        tg = {s.name: Together(api_key=cluster.api_key, base_url=s.url + "/v1", max_retries=0) for s in cluster.servers}
        oa = {s.name: openai.OpenAI(api_key=cluster.api_key, base_url=s.url + "/v1", max_retries=0)
              for s in cluster.servers}
        engines = str(tmp_path)  # every engine's checkpoint is cached under one of the servers' homes

        most_engines = 0
        seen: list[dict[int, str]] = []
        sampling = threading.Event()

        def count_engines() -> None:  # two processes must never both start a replica, even for a moment
            nonlocal most_engines
            while not sampling.is_set():
                found = engine_pids(engines)
                if len(found) > most_engines:
                    most_engines = len(found)
                    seen.append({pid: _cmdline(pid) for pid in found})
                time.sleep(0.05)

        sampler = threading.Thread(target=count_engines, daemon=True)
        sampler.start()
        endpoint = tg["A"].endpoints.create(model="default/tiny", hardware="cpu",
                                            autoscaling={"min_replicas": 1, "max_replicas": 1})
        wait_for(lambda: tg["A"].endpoints.retrieve(endpoint.id).state == "STARTED", 120, "STARTED")
        wait_for(lambda: len(cluster.replicas()) == 1, 10, "the replica's row")
        time.sleep(2 * 0.5)  # a few passes of every supervisor: nobody starts a second engine
        assert len(engine_pids(engines)) == 1
        (row,) = cluster.replicas()
        replica_url = str(row["url"])

        # attach through B: loaded into the replica (owned by whichever process) before it answers
        tg["B"].endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
        assert "pirate" in engine_adapters(replica_url)
        # chat through C, the same answer the engine gives directly
        answer = ask(oa["C"], "pirate")
        direct = httpx.post(replica_url + "/v1/chat/completions", json={
            "model": "pirate", "messages": PROMPT, "max_tokens": 8, "temperature": 0}).json()
        assert answer == direct["choices"][0]["message"]["content"]
        assert ask(oa["A"], "pirate") == answer == ask(oa["B"], "pirate")

        # detach through C: 404 through A within a second
        tg["C"].endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
        detached = time.monotonic()
        with pytest.raises(openai.NotFoundError):
            ask(oa["C"], "pirate")

        def gone_through_a() -> bool:
            try:
                ask(oa["A"], "pirate")
            except openai.NotFoundError:
                return True
            return False

        wait_for(gone_through_a, 1.0, "the detach seen through A", every=0.05)
        assert time.monotonic() - detached < 1.0
        assert "pirate" not in engine_adapters(replica_url)

        # kill -9 the owner while a client sends requests through the other two
        tg["A"].endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
        owner = cluster.owner_server(endpoint.id)
        others = [s for s in cluster.servers if s is not owner]
        results: list[tuple[float, str, str]] = []
        stop = threading.Event()

        def client() -> None:
            i = 0
            while not stop.is_set():
                server = others[i % 2]
                i += 1
                try:
                    ask(oa[server.name], "chef")
                    results.append((time.monotonic(), server.name, "ok"))
                except openai.APIError as exc:
                    results.append((time.monotonic(), server.name, repr(exc)))

        sender = threading.Thread(target=client, daemon=True)
        sender.start()
        wait_for(lambda: len(results) >= 4, 30, "traffic before the kill")
        killed = time.monotonic()
        cluster.kill(owner)
        new_owner = None

        def adopted() -> bool:
            nonlocal new_owner
            lease = cluster.lease_owner(endpoint.id) or ""
            rows = cluster.replicas()
            if str(owner.proc.pid) in lease or not rows or any(str(owner.proc.pid) in str(r["owner"]) for r in rows):
                return False
            new_owner = lease
            return True

        wait_for(adopted, 4 * cluster.lease_seconds, "the endpoint adopted by another process")
        adopted_after = time.monotonic() - killed
        time.sleep(1.5)  # more traffic after the adoption
        stop.set()
        sender.join(30)
        after_kill = [r for r in results if r[0] >= killed]
        failures = [r for r in results if r[2] != "ok"]
        assert after_kill and not failures, failures[:5]
        assert len(engine_pids(engines)) == 1, "an engine was started twice"
        assert [r["url"] for r in cluster.replicas()] == [replica_url]  # adopted, not replaced
        assert adopted_after < 4 * cluster.lease_seconds

        # the new owner serves attach and detach as before
        survivor = next(s for s in others if str(s.proc.pid) in (new_owner or ""))
        bystander = next(s for s in others if s is not survivor)
        tg[bystander.name].endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:space")
        assert "space" in engine_adapters(replica_url)
        assert ask(oa[survivor.name], "space")
        assert tg[survivor.name].endpoints.retrieve(endpoint.id).state == "STARTED"

        # kill -9 a process in the middle of an attach: the adapter ends attached and loaded, or not
        # attached (it may stay loaded in the engine, where nothing routes to it)
        tg[survivor.name].endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:space")
        attaching = threading.Thread(target=lambda: _attach_quietly(
            tg[bystander.name], endpoint.id, f"{endpoint.name}:pirate"), daemon=True)
        attaching.start()
        time.sleep(0.05)
        cluster.kill(bystander)
        attaching.join(30)
        attached = [a.adapter_name for a in tg[survivor.name].endpoints.adapters.list(endpoint.id).data]
        if "pirate" in attached:
            assert "pirate" in engine_adapters(replica_url) and ask(oa[survivor.name], "pirate")
        else:
            with pytest.raises(openai.NotFoundError):
                ask(oa[survivor.name], "pirate")
        sampling.set()
        sampler.join(10)
        assert most_engines == 1, f"{most_engines} engine processes at once: {seen[-1]}"

        tg[survivor.name].endpoints.delete(endpoint.id)
        wait_for(lambda: not engine_pids(engines), 30, "the engine stopped after the delete")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[-300:]
    except OSError:
        return "(gone)"


def _attach_quietly(tg: Together, endpoint_id: str, model_id: str) -> None:
    """Attach; the process answering it is killed mid-request, so any outcome is fine here."""
    with contextlib.suppress(Exception):
        tg.endpoints.adapters.add(endpoint_id, model_id=model_id)
