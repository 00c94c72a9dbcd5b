"""Database outages on PostgreSQL: connections killed under load, and a database that refuses new
connections for a while. The server answers 503 with Retry-After (never 500) while it cannot reach the
database and recovers by itself afterwards; the supervisor's loop survives.

The shared PostgreSQL server is never stopped: connections are killed with ``pg_terminate_backend``
in this test's own database only, and an outage is a database of its own with ``ALLOW_CONNECTIONS
false`` (no one may connect to it) until it is allowed again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.config import Settings
from tests.conftest import AUTH, PG_ADMIN_URL, _reset, authorize

KILL = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = :name AND pid <> pg_backend_pid()")
WORKSPACES = "/apis/entities/v2/workspaces"


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> Settings:
    _reset(postgres_url)
    return Settings(home=tmp_path / "home", database_url=postgres_url, supervisor_interval=0.2,
                    supervisor_max_backoff=1.0)


@pytest.fixture
def admin(postgres_url: str) -> Iterator[sa.Engine]:  # postgres_url: skipped with it when no server
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def kill_connections(admin: sa.Engine, database: str) -> int:
    with admin.connect() as conn:
        return len(conn.execute(sa.text(KILL), {"name": database}).all())


def test_connections_killed_under_load_give_no_500_and_the_server_recovers(
    live_server: str, admin: sa.Engine, settings: Settings
) -> None:
    database = sa.engine.make_url(settings.database_url).database
    statuses: list[tuple[str, int]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=live_server, timeout=30, headers=AUTH()) as http:
            n = 0
            while not stop.is_set():
                n += 1
                for method, path, body in (("GET", "/v1/models", None), ("GET", WORKSPACES, None),
                                           ("POST", WORKSPACES, {"name": f"w{worker}x{n}"})):
                    response = http.request(method, path, json=body)
                    statuses.append((f"{method} {path}", response.status_code))
                    if response.status_code == 503:
                        assert response.headers["retry-after"], response.text

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    killed = 0
    try:
        time.sleep(0.5)
        for _ in range(8):
            killed += kill_connections(admin, database)
            time.sleep(0.25)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert killed > 0 and len(statuses) > 20
    assert not [s for s in statuses if s[1] >= 500 and s[1] != 503], statuses
    # (a read through in_db is tried once more on a fresh connection; a write is never retried and
    # may answer 503: the client may retry it)
    # recovered by itself: every request succeeds again
    with httpx.Client(base_url=live_server, timeout=30, headers=AUTH()) as http:
        for _ in range(5):
            assert http.get("/v1/models").status_code == 200
            assert http.get(WORKSPACES).status_code == 200
        assert http.post(WORKSPACES, json={"name": "after-the-storm"}).status_code == 201
        assert http.get("/health").json()["status"] == "ok"


@pytest.fixture
def own_database(admin: sa.Engine, postgres_url: str) -> Iterator[str]:
    """A database of this test's own, which it may close to connections."""
    name = f"modelyard_outage_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_an_unreachable_database_is_503_with_retry_after_until_it_is_back(
    admin: sa.Engine, own_database: str, postgres_url: str, tmp_path: Path
) -> None:
    url = sa.engine.make_url(postgres_url).set(database=own_database).render_as_string(hide_password=False)
    settings = Settings(home=tmp_path / "home", database_url=url, supervisor_interval=0.1, supervisor_max_backoff=0.5)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as http:
        authorize(http)
        supervisor = app.state.supervisor
        passes: list[bool] = []
        read = supervisor._read_endpoints

        def counted(*args: object) -> object:
            try:
                views = read(*args)
            except Exception:
                passes.append(False)
                raise
            passes.append(True)
            return views

        supervisor._read_endpoints = counted
        assert http.get("/v1/models").status_code == 200 and http.get(WORKSPACES).status_code == 200

        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{own_database}" WITH ALLOW_CONNECTIONS false'))
        kill_connections(admin, own_database)
        try:
            openai_style = http.get("/v1/models")
            assert openai_style.status_code == 503 and openai_style.headers["retry-after"] == "5"
            assert openai_style.json()["error"]["code"] == "database_unavailable"
            assert openai_style.json()["error"]["type"] == "service_unavailable"
            for response in (http.get(WORKSPACES), http.get(f"{WORKSPACES}/default"),
                             http.post(WORKSPACES, json={"name": "during-the-outage"})):
                assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
                assert response.json() == {"detail": "the database is not reachable right now; retry shortly"}
            completion = http.post("/v1/chat/completions", json={"model": "ghost", "messages": []})
            assert completion.status_code == 503 and completion.json()["error"]["code"] == "database_unavailable"
            assert http.get("/health").status_code == 503
            time.sleep(1.0)  # the supervisor keeps trying, backing off
            assert passes and not any(passes[-3:]) and not supervisor._loop_task.done()
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{own_database}" WITH ALLOW_CONNECTIONS true'))

        # back by itself: the pool reconnects, the supervisor's passes succeed again
        assert http.get("/v1/models").status_code == 200
        assert http.post(WORKSPACES, json={"name": "after-the-outage"}).status_code == 201
        assert http.get(f"{WORKSPACES}/after-the-outage").status_code == 200
        deadline = time.monotonic() + 5
        while not (passes and passes[-1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert passes[-1] and not supervisor._loop_task.done()
        app.state.db.dispose()  # before the fixture drops the database
