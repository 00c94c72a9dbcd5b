"""Placement on a Ray cluster that is not there: the endpoint waits in PENDING with an error naming
the cluster (it is not a failure of the endpoint, so it never goes to ERROR), and starts when the
cluster is reachable. (Replicas on a real Ray cluster: tests/engine/test_backend_ray.py, `make test-ray`.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import TRUSTED
from tests.endpoints.test_serving import wait_for


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NOWHERE = f"127.0.0.1:{_closed_port()}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'placement.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.3, engine_start_timeout=60,
                    ray_address=NOWHERE, engine_max_failures=1)


def test_an_unreachable_ray_cluster_keeps_the_endpoint_pending_with_the_reason(
    registry: tuple[Modelyard, Together],
) -> None:
    _, tg = registry
    endpoint = tg.endpoints.create(model="default/tiny", hardware="cpu",
                                   autoscaling={"min_replicas": 1, "max_replicas": 1},
                                   extra_body={"placement": "ray", "resources": {"CPU": 1}})
    assert endpoint.state == "PENDING"
    waiting = wait_for(lambda: (e := tg.endpoints.retrieve(endpoint.id)).error and e, 30, "the reason")
    assert waiting.state == "PENDING", waiting  # not ERROR, even with engine_max_failures 1
    assert "ray" in waiting.error.lower() and (NOWHERE in waiting.error or "not installed" in waiting.error)
    time.sleep(1.5)  # several passes later: still waiting, still saying why
    again = tg.endpoints.retrieve(endpoint.id)
    assert again.state == "PENDING" and again.error
    tg.endpoints.update(endpoint.id, state="STOPPED")
    wait_for(lambda: tg.endpoints.retrieve(endpoint.id).state == "STOPPED", 30, "STOPPED")
