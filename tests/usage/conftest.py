"""Fixtures of the usage tests: an app that serves ``/v1/usage`` with a recorder on ``app.state.usage``
(the app's own once the lifespan creates one; else one made here), on a clock the test moves, and an
empty ``usage_minutes`` table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from modelyard.app import create_app
from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.db.engine import Database
from modelyard.usage.recorder import UsageRecorder
from modelyard.usage.router import router as usage_router


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now

    def at(self, iso: str) -> Clock:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()
        return self


def clear_usage(url: str) -> None:
    db = Database(url)
    db.migrate()
    with db.session(write=True) as session:
        session.execute(sa.text("DELETE FROM usage_minutes"))
    db.dispose()


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    clear_usage(settings.resolved_database_url)
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/v1/usage" for route in app.router.routes):
        app.include_router(usage_router)  # until app.py includes it
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock(0.0).at("2026-11-30T10:15:00")


@pytest.fixture
def recorder(client: Modelyard, clock: Clock) -> Iterator[UsageRecorder]:
    """The app's recorder on ``clock`` (the SDK's TestClient has run the lifespan)."""
    state = client._http.app.state  # type: ignore[attr-defined]
    made = getattr(state, "usage", None) is None
    if made:
        state.usage = UsageRecorder(state.db, flush_interval=3600)
    state.usage.clock = clock
    yield state.usage
    if made:
        state.usage = None


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database with no usage rows, for the recorder on its own."""
    clear_usage(database_url)
    database = Database(database_url)
    yield database
    database.dispose()
