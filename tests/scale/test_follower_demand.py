"""An endpoint scaled to zero wakes up for a request that reaches a process that does not own it: the
request is held there, the owner hears of it (the lease row, a NOTIFY) and starts a replica, and the
held request is answered by it. Then a detach through the owner is seen by the other process, and a
clean stop of the owner hands its running replica over to the other."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from together import Together

from tests.scale.cluster import Cluster, engine_pids, wait_for


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_request_through_another_process_wakes_an_endpoint_scaled_to_zero(
    tmp_path: Path, fixture_models: dict[str, Path], backend: str,
) -> None:
    """On PostgreSQL the owner hears of the held request by NOTIFY; on SQLite, on its next pass."""
    with Cluster(tmp_path, size=2, lease_seconds=3.0, backend=backend) as cluster:
        cluster.register(fixture_models)
        first = cluster.servers[0]
        tg = Together(api_key=cluster.api_key, base_url=first.url + "/v1", max_retries=0)
        endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu",
                                       autoscaling={"min_replicas": 0, "max_replicas": 1})
        wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STARTED", 60, "STARTED (scaled to zero)")
        wait_for(lambda: cluster.lease_owner(endpoint.id), 10, "an owner")
        time.sleep(1.0)
        assert not engine_pids(str(tmp_path)) and not cluster.replicas()
        other = next(s for s in cluster.servers if s is not cluster.owner_server(endpoint.id))
        oa = openai.OpenAI(api_key=cluster.api_key, base_url=other.url + "/v1", max_retries=0, timeout=120)
        started = time.monotonic()
        answer = oa.chat.completions.create(model=endpoint.name, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, temperature=0)
        assert answer.choices[0].message.content is not None and answer.model == endpoint.name
        assert len(engine_pids(str(tmp_path))) == 1 and len(cluster.replicas()) == 1
        assert time.monotonic() - started < 60

        owner = Together(api_key=cluster.api_key, base_url=cluster.owner_server(endpoint.id).url + "/v1",
                         max_retries=0)
        owner.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
        assert oa.chat.completions.create(model="chef", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4).model == "chef"
        owner.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:chef")

        def gone() -> bool:
            try:
                oa.chat.completions.create(model="chef", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            except openai.NotFoundError:
                return True
            return False

        wait_for(gone, 1.5, "the detach seen by the other process", every=0.05)

        # a clean stop of the owner (a rolling restart) hands the running replica over: no new engine
        (row,) = cluster.replicas()
        engines = engine_pids(str(tmp_path))
        stopping = cluster.owner_server(endpoint.id)
        stopping.proc.terminate()
        stopping.proc.wait(30)
        wait_for(lambda: [r["owner"] for r in cluster.replicas()] not in ([], [row["owner"]]), 10,
                 "the replica adopted by the process still running")
        assert [r["url"] for r in cluster.replicas()] == [row["url"]] and engine_pids(str(tmp_path)) == engines
        assert oa.chat.completions.create(model=endpoint.name, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0).choices[0].message.content \
            == answer.choices[0].message.content
