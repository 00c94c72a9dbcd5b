"""Fixtures: every store and API test runs on SQLite and on PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (override with MODELYARD_TEST_PG_URL, an admin URL).
Each test session creates its own database there and drops it at the end. In CI
(``CI=true``) an unreachable server fails the run; elsewhere those tests are skipped with a
message saying how to enable them.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.db.engine import Database


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far (torch, transformers, the app) lives until the end: move it out of
    the collector's reach, so a full collection during a test does not scan it (on this 2-core machine
    such a pause stalled live servers' answers and PostgreSQL connects past their timeouts)."""
    gc.collect()
    gc.freeze()

os.environ.setdefault("MODELYARD_ALLOWED_HOSTS", "testserver")  # the Host of Starlette's TestClient

PG_ADMIN_URL = os.environ.get("MODELYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TRUSTED = ["trusted"]


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = _pg_reachable()
    if problem:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL} ({problem}); set MODELYARD_TEST_PG_URL"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"modelyard_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'modelyard.db'}"


def _reset(url: str) -> None:
    """Empty the registry between tests, keeping the built-in workspaces (a migrated schema)."""
    db = Database(url)
    db.migrate()
    with db.session(write=True) as session:
        session.execute(sa.text("DELETE FROM endpoint_adapters"))
        session.execute(sa.text("DELETE FROM endpoints"))
        session.execute(sa.text("DELETE FROM adapters"))
        session.execute(sa.text("DELETE FROM models"))
        session.execute(sa.text("DELETE FROM fileset_files"))
        session.execute(sa.text("DELETE FROM filesets"))
        session.execute(sa.text("DELETE FROM audit_events"))
        session.execute(sa.text("DELETE FROM secrets"))
        session.execute(sa.text("DELETE FROM model_providers"))
        session.execute(sa.text("DELETE FROM virtual_models"))
        session.execute(sa.text("DELETE FROM usage_minutes"))
        session.execute(sa.text("DELETE FROM workspaces WHERE name NOT IN ('default', 'system')"))
        # each test's server has its own home, so its own keyring: keys signed under another are unreadable
        session.execute(sa.text("DELETE FROM access_keys"))
        session.execute(sa.text("DELETE FROM signing_keys"))
        session.execute(sa.text("DELETE FROM role_bindings"))  # then the built-in shares, as migration 0005 seeds them
        for workspace, role in (("default", "Editor"), ("system", "Viewer")):
            session.execute(sa.text("INSERT INTO role_bindings (id, principal, workspace, role, granted_by, granted_at) "
                                    "VALUES (:id, '*', :ws, :role, 'system', CURRENT_TIMESTAMP)"),
                            {"id": f"rb-seed-{workspace}", "ws": workspace, "role": role})
        session.execute(sa.text("UPDATE auth_generation SET value = value + 1"))
    db.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    _reset(database_url)
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))  # never the developer's own credentials
    return Settings(home=tmp_path / "home", database_url=database_url, trusted_fileset_workspaces=TRUSTED)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[Modelyard]:
    """The SDK wired to the app in-process: client and server are tested together."""
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {admin_key(app.state.settings)}"
        yield Modelyard("http://testserver", http_client=http)


def as_user(client: Modelyard, principal: str, roles: dict[str, str] | None = None, *,
            scopes: list[str] | None = None, workspace: str | None = None) -> Modelyard:
    """An SDK for ``principal`` over the same connection as ``client`` (the PlatformAdmin), with
    ``roles`` ({workspace: role}) granted first; ``scopes`` narrow its key."""
    for ws, role in (roles or {}).items():
        client.members.add(ws, principal, roles=[role])
    key = client.access_keys.create(principal=principal, scopes=scopes, workspace=workspace)
    return Modelyard(client.base_url, http_client=client._http, api_key=key.token)


def AUTH() -> dict[str, str]:
    """The ``Authorization`` header of the running ``live_server`` (its PlatformAdmin key)."""
    return {"Authorization": f"Bearer {os.environ['MODELYARD_API_KEY']}"}


def authorize(http: TestClient) -> TestClient:
    """``http`` (a started TestClient) sending the app's PlatformAdmin key on every request."""
    http.headers["Authorization"] = f"Bearer {admin_key(http.app.state.settings)}"  # type: ignore[attr-defined]
    return http


def admin_key(settings: Settings | Path) -> str:
    """The PlatformAdmin key the server wrote to ``{home}/credentials`` on its first start."""
    from modelyard.client.credentials import read_credentials

    return read_credentials(settings if isinstance(settings, Path) else settings.home)["default"]["api_key"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real uvicorn server on a free port (for concurrency and CLI tests); yields its URL. The SDK,
    the CLI and the tests' OpenAI/Together clients use its PlatformAdmin key (``MODELYARD_API_KEY``)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    monkeypatch.setenv("MODELYARD_API_KEY", admin_key(app.state.settings))
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama, its trained tokenizer and three trained adapters (built once per run)."""
    from modelyard.engine.fixtures import build_fixture_set

    return build_fixture_set(tmp_path_factory.mktemp("fixtures"))


def make_fileset(client: Modelyard, reference: str, files: dict[str, bytes] | None = None) -> None:
    """Create fileset ``ws/name`` (and its workspace) holding ``files`` (a placeholder by default):
    models and adapters may only point at filesets that exist."""
    from modelyard.client import ConflictError

    workspace, _, name = reference.partition("/")
    for create in (lambda: client.workspaces.create(workspace), lambda: client.filesets.create(workspace, name=name)):
        try:
            create()
        except ConflictError:
            pass
    for path, data in (files or {"README.md": b"placeholder"}).items():
        client.filesets.upload_file(workspace, name, path, data)
