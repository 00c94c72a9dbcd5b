"""The audit trail: what the middleware records for real requests, the list route's filters and sort,
and who may read which events (on SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelyard.audit import service
from modelyard.audit.middleware import AuditTrail
from modelyard.auth.principal import Access, Principal
from modelyard.config import Settings
from modelyard.db.engine import Database
from modelyard.db.tables import AuditEvent
from modelyard.listing import parse_list_query

AUDIT = "/apis/auth/v2/audit"
MODELS = "/apis/models/v2/workspaces/team/models"


def _with_audit(app: FastAPI) -> FastAPI:
    if not any(m.cls is AuditTrail for m in app.user_middleware):  # until app.py adds it itself
        app.add_middleware(AuditTrail)
    return app


def _admin_token(app: FastAPI) -> str | None:
    try:
        from tests.conftest import admin_key  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    authority = getattr(app.state, "authority", None)
    return admin_key(app.state.settings) if authority is not None and authority.enabled else None


@pytest.fixture
def http(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(_with_audit(app)) as client:
        token = _admin_token(app)
        if token:
            client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


def events(db: Database) -> list[AuditEvent]:
    from sqlalchemy import select

    with db.session() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_changes_are_recorded_reads_are_not(http: TestClient, db: Database) -> None:
    assert http.post("/apis/entities/v2/workspaces", json={"name": "team"}).status_code == 201
    created = http.post(MODELS, json={"name": "m1"}, headers={"X-Request-ID": "req-42"})
    assert created.status_code == 201, created.text
    assert http.get(f"{MODELS}/m1").status_code == 200
    assert http.get(MODELS).status_code == 200
    assert http.patch(f"{MODELS}/m1", json={"description": "tuned"}).status_code == 200
    duplicate = http.post(MODELS, json={"name": "m1", "description": "secret-ish body"})
    assert duplicate.status_code == 409
    assert http.delete(f"{MODELS}/m1").status_code == 204

    rows = events(db)
    assert [(r.action, r.method, r.status, r.outcome, r.workspace, r.target) for r in rows] == [
        ("create_workspace", "POST", 201, "success", None, "team"),
        ("create_model", "POST", 201, "success", "team", "team/m1"),
        ("update_model", "PATCH", 200, "success", "team", "team/m1"),
        ("create_model", "POST", 409, "failed", "team", "team"),  # a failed create names no entity
        ("delete_model", "DELETE", 204, "success", "team", "team/m1"),
    ]
    assert rows[1].request_id == "req-42" and rows[0].request_id is None
    assert rows[1].path == MODELS
    assert all(r.at <= datetime.utcnow() + timedelta(seconds=1) for r in rows)  # noqa: DTZ003 - naive UTC rows
    principals = {r.principal for r in rows}
    assert len(principals) == 1
    if _admin_token(http.app):  # type: ignore[arg-type]
        assert principals != {"anonymous"}
    assert not any("secret-ish" in (r.target or "") + r.path for r in rows)  # bodies are never recorded


def test_unrouted_and_refused_requests(http: TestClient, db: Database) -> None:
    assert http.post("/apis/nothing/here").status_code == 404
    rows = events(db)
    assert [(r.action, r.status, r.outcome, r.target) for r in rows] == [("POST /apis/nothing/here", 404, "failed", None)]
    if _admin_token(http.app):  # type: ignore[arg-type]
        refused = http.post(MODELS, json={"name": "m2"}, headers={"Authorization": "Bearer not-a-key"})
        assert refused.status_code == 401
        last = events(db)[-1]
        assert (last.principal, last.action, last.outcome, last.workspace) == ("anonymous", "create_model", "denied", "team")


def test_a_failed_write_never_fails_the_request(
    http: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(service, "record", broken)
    with caplog.at_level(logging.WARNING, logger="modelyard.audit"):
        assert http.post("/apis/entities/v2/workspaces", json={"name": "team"}).status_code == 201
    assert any(r.getMessage() == "audit event not recorded" for r in caplog.records)
    assert events(db) == []


def _seed(db: Database) -> None:
    start = datetime(2026, 1, 1, 12, 0, 0)
    rows = [
        ("alice", "create_model", "team-a", 201, "success", 0),
        ("bob", "delete_model", "team-b", 403, "denied", 1),
        ("alice", "create_model", "team-a", 409, "failed", 2),
        ("anonymous", "create_fileset", "team-b", 401, "denied", 3),
        ("carol", "create_workspace", None, 201, "success", 4),
    ]
    with db.session(write=True) as session:
        for principal, action, workspace, status, outcome, minutes in rows:
            session.add(service.event(
                at=start + timedelta(minutes=minutes), principal=principal, action=action, method="POST",
                path=f"/apis/models/v2/workspaces/{workspace}/models", workspace=workspace, target=None,
                status=status, outcome=outcome, request_id=None,
            ))


def test_list_filters_and_sort(http: TestClient, db: Database) -> None:
    _seed(db)

    def principals(**params: str) -> list[str]:
        response = http.get(AUDIT, params=params)
        assert response.status_code == 200, response.text
        return [e["principal"] for e in response.json()["data"]]

    assert principals() == ["carol", "anonymous", "alice", "bob", "alice"]  # newest first by default
    assert principals(sort="at") == ["alice", "bob", "alice", "anonymous", "carol"]
    assert principals(**{"filter[principal]": "alice"}) == ["alice", "alice"]
    assert principals(**{"filter[action]": "create_model"}) == ["alice", "alice"]
    assert principals(**{"filter[workspace]": "team-b"}) == ["anonymous", "bob"]
    assert principals(**{"filter[outcome]": "denied"}) == ["anonymous", "bob"]
    assert principals(**{"filter[status]": "409"}) == ["alice"]
    assert principals(**{"filter[status][$like]": "4*"}) == ["anonymous", "alice", "bob"]
    assert principals(**{"filter[status][$in]": "201,401"}) == ["carol", "anonymous", "alice"]
    window = {"filter[at][$gte]": "2026-01-01T12:01:00Z", "filter[at][$lte]": "2026-01-01T12:03:00Z"}
    assert principals(**window) == ["anonymous", "alice", "bob"]
    body = http.get(AUDIT, params={"filter[outcome]": "denied", "page_size": "1"}).json()
    assert body["pagination"]["total_results"] == 2 and body["sort"] == "-at"
    assert body["filter"] == {"outcome": "denied"}
    first = body["data"][0]
    assert first["at"].endswith("Z") and first["status"] == 401 and first["method"] == "POST"
    assert http.get(AUDIT, params={"filter[body]": "x"}).status_code == 400
    assert http.get(AUDIT, params={"sort": "name"}).status_code == 422
    assert events(db)[-1].action != "list_audit_events"  # reading the trail is not recorded


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        (Access(Principal("root"), platform_admin=True), ["carol", "anonymous", "alice", "bob", "alice"]),
        (Access.local(), ["carol", "anonymous", "alice", "bob", "alice"]),
        (Access(Principal("dana"), ranks={"team-a": 3, "team-b": 2}), ["alice", "alice"]),
        (Access(Principal("erin"), ranks={"team-a": 3, "team-b": 3}), ["anonymous", "alice", "bob", "alice"]),
        (Access(Principal("frank"), ranks={"team-a": 2, "team-b": 1}), []),  # an empty list, not a 403
        (Access(Principal("gina")), []),
    ],
    ids=["platform-admin", "local", "admin-of-one", "admin-of-two", "editor-and-viewer", "nobody"],
)
def test_who_sees_what(db: Database, access: Access, expected: list[str]) -> None:
    _seed(db)
    query = parse_list_query({}, service.store.FILTERS, sort="-at", page=1, page_size=100)
    with db.session() as session:
        page = service.list_(session, query, access)
    assert [e.principal for e in page.data] == expected
    assert page.pagination.total_results == len(expected)


def test_rules_on_plain_values() -> None:
    alice = Access(Principal("alice", default_workspace="home"), ranks={"team": 2})
    assert service.workspace_of("/apis/files/v2/workspaces/team/filesets/x", None, alice) == "team"
    assert service.workspace_of("/apis/models/v2/workspaces/-/models", None, alice) is None
    assert service.workspace_of("/v1/endpoints", "other", alice) == "other"
    assert service.workspace_of("/v1/endpoints", None, alice) == "home"
    assert service.workspace_of("/v1/endpoints", None, None) is None
    assert service.workspace_of("/apis/auth/v2/access-keys", "other", alice) is None

    assert service.target_of({"workspace": "team"}, {"name": "m1", "id": "model-x"}) == "team/m1"
    assert service.target_of({"workspace": "team", "name": "m1"}, {"name": "m1"}) == "team/m1"
    assert service.target_of({}, {"jti": "key-1", "name": "ci", "token": "secret"}) == "key-1"
    assert service.target_of({}, {"id": "ep-1"}) == "ep-1"
    assert service.target_of({}, [1, 2]) is None and service.target_of({}, None) is None

    assert service.outcome_of(201, alice, "team") == "success" and service.outcome_of(307, alice, None) == "success"
    assert service.outcome_of(401, None, None) == service.outcome_of(403, alice, "team") == "denied"
    assert service.outcome_of(404, alice, "elsewhere") == "denied"  # a workspace alice cannot see
    assert service.outcome_of(404, alice, "team") == "failed"  # visible workspace: the entity is missing
    assert service.outcome_of(404, Access.local(), "team") == "failed"
    assert service.outcome_of(409, alice, "team") == service.outcome_of(500, None, None) == "failed"

    assert not service.audited("GET", "/x") and not service.audited("OPTIONS", "/x")
    assert not service.audited("POST", "/v1/chat/completions")
    assert service.audited("POST", "/v1/chat/completions", inference=True)
    assert service.audited("POST", "/v1/endpoints") and service.audited("DELETE", "/x")

    row = service.event(at=datetime(2026, 1, 1), principal="p" * 400, action="POST " + "/a" * 100, method="PROPFINDX",
                        path="/" + "x" * 2000, workspace="w" * 200, target=None, status=400, outcome="failed",
                        request_id="r" * 100)
    assert (len(row.principal), len(row.action), len(row.method), len(row.path), len(row.workspace or ""),
            len(row.request_id or "")) == (255, 64, 8, 1024, 63, 64)
