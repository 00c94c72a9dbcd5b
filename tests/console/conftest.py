"""Console tests: on SQLite only (the console adds no storage; the API it calls is tested on both
databases elsewhere), with the console and the offline docs mounted on the app under test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.console import mount_console, mount_offline_docs
from tests.conftest import TRUSTED

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'console.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120,
                    usage_flush_interval=0.5)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    mount_console(app)  # no-ops once create_app mounts them itself
    mount_offline_docs(app)
    return app


def sign_in(http: TestClient, key: str) -> TestClient:
    """Sign ``http`` (a TestClient, no Authorization header) in to the console with ``key``."""
    page = http.get("/console/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = http.post("/console/signin", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return http


def csrf_of(html: str) -> str:
    return re.search(r'data-csrf="([^"]+)"', html).group(1)
