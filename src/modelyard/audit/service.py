"""Audit trail rules: which requests are recorded, what an event says about them, and who may read it.

Every request that can change something (any method but GET, HEAD and OPTIONS) becomes one event:
who, the operation's stable name, the workspace it acted in, what it acted on, and how it ended.
Inference calls (chat, completions, messages, embeddings) change nothing and are left out unless asked
for: one row per generated answer would make the trail a second request log. Request bodies are never
recorded (they may hold secrets); the target is read from the path and from the name or id a create
answered with.

Reading the trail: a PlatformAdmin (and the local mode) sees every event; anyone else sees the events
of the workspaces where they are Admin, and an empty list when that is none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from modelyard.audit import store
from modelyard.audit.schemas import AuditEvent, Outcome
from modelyard.auth.principal import RANK, Access
from modelyard.db import tables
from modelyard.db.engine import Database
from modelyard.listing import ListQuery, Page

READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/embeddings")
ANONYMOUS = "anonymous"
BODY_LIMIT = 64 * 1024
"""A 2xx JSON answer up to this size is read for the created entity's name or id; larger ones are not."""
_WORKSPACED = re.compile(r"^/apis/[^/]+/v2/workspaces/([^/]+)")
_TARGET_KEYS = ("jti", "name", "id")


def audited(method: str, path: str, *, inference: bool = False) -> bool:
    if method in READ_ONLY:
        return False
    return inference or not path.endswith(INFERENCE)


def principal_of(access: Access | None) -> str:
    return access.principal.id if access is not None and access.principal.id else ANONYMOUS


def workspace_of(path: str, header: str | None, access: Access | None) -> str | None:
    """The workspace named by the path; for ``/v1`` routes the ``X-Modelyard-Workspace`` header, else
    the caller's default workspace; ``None`` for routes outside any workspace (and ``-``, across them)."""
    match = _WORKSPACED.match(path)
    if match:
        workspace = match.group(1)
        return None if workspace == "-" else workspace
    if path.startswith("/v1/"):
        return header or (access.principal.default_workspace if access is not None else None) or None
    return None


def action_of(route_name: str | None, method: str, path: str) -> str:
    """The route's endpoint name (``create_model``): stable across path changes. Without a route
    (an unknown path, a request refused before routing), ``METHOD path``."""
    return route_name or f"{method} {path}"


def target_of(path_params: Mapping[str, Any], answer: Any) -> str | None:
    """The path parameters joined with ``/``, then what a create answered with: its ``jti``, ``name``
    or ``id`` (the first present) unless the path already ends with it."""
    parts = [str(value) for value in path_params.values() if value not in (None, "")]
    if isinstance(answer, dict):
        for key in _TARGET_KEYS:
            value = answer.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                if parts[-1:] != [str(value)]:
                    parts.append(str(value))
                break
    return "/".join(parts) or None


def outcome_of(status: int, access: Access | None, workspace: str | None) -> Outcome:
    """``success`` for 2xx and 3xx; ``denied`` for 401, 403, and a 404 that hides a workspace the
    caller cannot see (or that was answered before the caller was known); ``failed`` otherwise."""
    if 200 <= status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    if status == 404:
        if access is None:
            return "denied"
        if access.enforced and workspace is not None and access.rank(workspace) == 0:
            return "denied"
    return "failed"


def _clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


def event(
    *, at: datetime, principal: str, action: str, method: str, path: str, workspace: str | None,
    target: str | None, status: int, outcome: Outcome, request_id: str | None,
) -> tables.AuditEvent:
    """One row, each value cut to its column (a path segment may be longer than any name)."""
    return tables.AuditEvent(
        at=at, principal=_clip(principal, 255), action=_clip(action, 64), method=_clip(method, 8),
        path=_clip(path, 1024), workspace=_clip(workspace, 63), target=_clip(target, 1024), status=status,
        outcome=outcome, request_id=_clip(request_id, 64),
    )


def record(db: Database, row: tables.AuditEvent) -> None:
    """Write one event in its own short transaction (blocking: call it from a worker thread)."""
    with db.session(write=True) as session:
        store.add(session, row)


def visible_workspaces(access: Access) -> frozenset[str] | None:
    """The workspaces whose events ``access`` may read; ``None``: every event."""
    if access.platform_admin or not access.enforced:
        return None
    return frozenset(ws for ws in access.ranks if access.rank(ws) >= RANK["Admin"])


def to_wire(row: tables.AuditEvent) -> AuditEvent:
    return AuditEvent(
        id=row.id, at=row.at.replace(tzinfo=UTC), principal=row.principal, action=row.action, method=row.method,
        path=row.path, workspace=row.workspace, target=row.target, status=row.status,
        outcome=row.outcome,  # type: ignore[arg-type]
        request_id=row.request_id,
    )


def list_(session: Session, query: ListQuery, access: Access) -> Page[AuditEvent]:
    rows, pagination = store.list_(session, query, visible_workspaces(access))
    return Page[AuditEvent](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort,
                            filter=query.echo)
