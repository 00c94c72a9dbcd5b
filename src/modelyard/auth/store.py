"""Queries of the auth domain: the generation counter, signing keys, access keys, role bindings."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, event, select, update
from sqlalchemy.orm import Session

from modelyard.db.engine import insert_unique
from modelyard.db.tables import AccessKey, AuthGeneration, RoleBinding, SigningKey
from modelyard.errors import NotFound

_GENERATION = select(AuthGeneration.value).where(AuthGeneration.id == 1)
GENERATION_SQL = "SELECT value FROM auth_generation WHERE id = 1"
"""The same read in plain SQL, for the connection the authority keeps for it (no ORM, no pool)."""


def generation(conn: Connection | Session) -> int:
    return int(conn.execute(_GENERATION).scalar_one())


local_changes = 0
"""Commits in this process that moved the generation: an authority that saw a different count reads the
generation at once instead of trusting its recent read (a change made here is in force before its
answer goes out)."""


def bump(session: Session) -> None:
    """Tell every server process that keys or bindings changed (in the caller's transaction)."""
    session.execute(update(AuthGeneration).where(AuthGeneration.id == 1).values(value=AuthGeneration.value + 1))
    session.info["modelyard_auth_bumped"] = True


@event.listens_for(Session, "after_commit")
def _count_local_change(session: Session) -> None:
    if session.info.pop("modelyard_auth_bumped", False):
        global local_changes
        local_changes += 1


@event.listens_for(Session, "after_rollback")
def _forget_local_change(session: Session) -> None:
    session.info.pop("modelyard_auth_bumped", None)


def signing_keys(session: Session) -> list[SigningKey]:
    return list(session.scalars(select(SigningKey).order_by(SigningKey.created_at)))


def add_signing_key(session: Session, row: SigningKey) -> None:
    insert_unique(session, row, f"signing key {row.kid} exists")


def add_access_key(session: Session, row: AccessKey) -> None:
    insert_unique(session, row, f"access key {row.jti} exists")
    bump(session)


def access_key(session: Session, jti: str, *, principal: str | None = None) -> AccessKey:
    """The key ``jti``; with ``principal``, only if it is that principal's (else 404, as if absent)."""
    row = session.get(AccessKey, jti, with_for_update=True)
    if row is None or (principal is not None and row.principal != principal):
        raise NotFound(f"Access key '{jti}' not found")
    return row


def access_keys(session: Session, *, principal: str | None, offset: int, limit: int) -> list[AccessKey]:
    stmt = select(AccessKey).order_by(AccessKey.created_at.desc(), AccessKey.jti).offset(offset).limit(limit)
    if principal is not None:
        stmt = stmt.where(AccessKey.principal == principal)
    return list(session.scalars(stmt))


def key_states(conn: Connection | Session) -> dict[str, tuple[str, datetime | None]]:
    return {jti: (status, expires) for jti, status, expires in
            conn.execute(select(AccessKey.jti, AccessKey.status, AccessKey.expires_at))}


def active_bindings(session: Session, *, workspace: str | None = None,
                    principal: str | None = None) -> list[RoleBinding]:
    stmt = select(RoleBinding).where(RoleBinding.revoked_at.is_(None)).order_by(RoleBinding.granted_at, RoleBinding.id)
    if workspace is not None:
        stmt = stmt.where(RoleBinding.workspace == workspace)
    if principal is not None:
        stmt = stmt.where(RoleBinding.principal == principal)
    return list(session.scalars(stmt))


def binding_triples(conn: Connection) -> list[tuple[str, str | None, str]]:
    return [tuple(row) for row in conn.execute(  # type: ignore[misc]
        select(RoleBinding.principal, RoleBinding.workspace, RoleBinding.role).where(RoleBinding.revoked_at.is_(None)))]


def add_binding(session: Session, row: RoleBinding) -> RoleBinding:
    ws = f"workspace '{row.workspace}'" if row.workspace else "the platform"
    insert_unique(session, row, f"'{row.principal}' already has the {row.role} role in {ws}")
    bump(session)
    return row


def binding(session: Session, binding_id: str) -> RoleBinding:
    row = session.get(RoleBinding, binding_id)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"Role binding '{binding_id}' not found")
    return row


def revoke_bindings(session: Session, rows: Iterable[RoleBinding], at: datetime) -> None:
    for row in rows:
        row.revoked_at = at
    session.flush()
    bump(session)


def platform_admin_exists(session: Session) -> bool:
    return session.scalar(select(RoleBinding.id).where(
        RoleBinding.role == "PlatformAdmin", RoleBinding.revoked_at.is_(None)).limit(1)) is not None
