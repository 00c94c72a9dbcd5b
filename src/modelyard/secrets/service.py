"""Secret rules: values stored only encrypted, who may read or change them, key rotation; and the
encryption of a model's ``api_endpoint.api_key``, which is a secret of the same kind.

Values are encrypted with the server's keyring (:mod:`modelyard.auth.crypto`) before they reach the
database and decrypted only for ``/access`` (and, for model API keys, to mask them and for the
gateway). A stored value that no key of the keyring decrypts (the server was started with another
``MODELYARD_SECRET_KEY``, or ``secret.key`` was replaced) is answered **409** with
:class:`SecretUndecryptable`: the request clashes with what is stored, retrying does not help, and the
client or operator can act (restore the key, or overwrite or delete the secret). It is never a 500,
and no value or ciphertext is ever logged or echoed in an error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session

from modelyard.auth.crypto import Keyring, KeyringError
from modelyard.auth.principal import PLATFORM_ADMIN, Access
from modelyard.db import tables
from modelyard.db.engine import utcnow
from modelyard.errors import Conflict, Forbidden, Unprocessable
from modelyard.listing import ListQuery, Page
from modelyard.secrets import store
from modelyard.secrets.schemas import RotationResult, SecretAccess, SecretEntity
from modelyard.workspaces import store as workspace_store

log = logging.getLogger("modelyard.secrets")

MAX_VALUE_BYTES = 64 * 1024
"""Largest secret value, in UTF-8 bytes."""
KEY_HINT = "the server's MODELYARD_SECRET_KEY (or, when that is unset, secret.key in MODELYARD_HOME)"

_KEYRING_LOCK = threading.Lock()
"""Makes "read the keyring, add a key, install it" one step, so that two rotations in this process
cannot each write a key file that lacks the other's new key."""


class SecretUndecryptable(Conflict):
    code = "secret_undecryptable"


def _undecryptable(what: str, remedy: str) -> SecretUndecryptable:
    return SecretUndecryptable(
        f"{what} cannot be decrypted with any key of {KEY_HINT}: it was encrypted under a key the server "
        f"no longer has. Restore that key (MODELYARD_SECRET_KEY takes several keys, comma-separated), or {remedy}"
    )


def check_value(value: str) -> None:
    """1 byte to 64 KiB. Checked here rather than in the schema so that a 422 never repeats the value."""
    size = len(value.encode())
    if size == 0:
        raise Unprocessable("The secret's value must not be empty")
    if size > MAX_VALUE_BYTES:
        raise Unprocessable(f"The secret's value is {size} bytes; the limit is {MAX_VALUE_BYTES} bytes (64 KiB)")


def to_wire(row: tables.Secret) -> SecretEntity:
    return SecretEntity(
        name=row.name,
        workspace=row.workspace,
        description=row.description,
        created_at=row.created_at.replace(tzinfo=UTC),
        updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def _open(session: Session, access: Access, workspace: str, role: str, action: str) -> None:
    access.require(workspace, role, action)
    workspace_store.require(session, workspace)


def create(
    session: Session, keyring: Keyring, access: Access, workspace: str, *,
    name: str, description: str | None, value: str,
) -> SecretEntity:
    _open(session, access, workspace, "Editor", "create secrets")
    check_value(value)
    now = utcnow()
    row = tables.Secret(
        workspace=workspace, name=name, description=description, ciphertext=keyring.encrypt(value),
        created_by=access.who or None, created_at=now, updated_at=now,
    )
    return to_wire(store.add(session, row))


def get(session: Session, access: Access, workspace: str, name: str) -> SecretEntity:
    _open(session, access, workspace, "Viewer", "read secrets")
    return to_wire(store.get(session, workspace, name))


def list_(session: Session, access: Access, workspace: str, query: ListQuery) -> Page[SecretEntity]:
    _open(session, access, workspace, "Viewer", "read secrets")
    rows, pagination = store.list_(session, workspace, query)
    return Page[SecretEntity](
        data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo
    )


def update(
    session: Session, keyring: Keyring, access: Access, workspace: str, name: str, changes: Mapping[str, str | None]
) -> SecretEntity:
    """``changes`` holds the fields the client sent: ``description`` (``None`` clears it) and ``value``
    (``None`` keeps it)."""
    _open(session, access, workspace, "Editor", "update secrets")
    row = store.get(session, workspace, name)
    if "description" in changes:
        row.description = changes["description"]
    value = changes.get("value")
    if value is not None:
        check_value(value)
        row.ciphertext = keyring.encrypt(value)
    row.updated_at = utcnow()
    store.flush(session)
    return to_wire(row)


def delete(session: Session, access: Access, workspace: str, name: str) -> None:
    _open(session, access, workspace, "Editor", "delete secrets")
    store.delete(session, store.get(session, workspace, name))


def reveal(session: Session, keyring: Keyring, access: Access, workspace: str, name: str) -> SecretAccess:
    """The value itself: Editor, not Viewer (a Viewer sees that a secret exists, not what it is)."""
    _open(session, access, workspace, "Editor", "access secret values")
    row = store.get(session, workspace, name)
    try:
        value = keyring.decrypt(row.ciphertext)
    except KeyringError:
        raise _undecryptable(
            f"Secret '{workspace}/{name}'", "set a new value with PATCH (or delete the secret)"
        ) from None
    return SecretAccess(name=row.name, workspace=row.workspace, value=value)


def rotate(
    session: Session, access: Access, load: Callable[[], Keyring], install: Callable[[Keyring], None]
) -> RotationResult:
    """Add a new primary key (to the key file; with MODELYARD_SECRET_KEY the operator has already put the
    new key first), install it, then re-encrypt under it, in this one transaction, every secret, every
    signing key and every model API key. Any value no key decrypts fails the whole rotation (409 naming
    it) and changes no row; the key added to the file stays, harmlessly (every older key is kept)."""
    if not access.platform_admin:
        raise Forbidden(
            f"Permission denied: rotating the encryption keys needs the {PLATFORM_ADMIN} role; "
            f"'{access.who}' does not have it"
        )
    with _KEYRING_LOCK:
        keyring = load().add_primary()
        install(keyring)
    secrets = store.all_secrets(session)
    for secret in secrets:
        secret.ciphertext = _reencrypt(keyring, secret.ciphertext, f"Secret '{secret.workspace}/{secret.name}'")
    for signing_key in store.all_signing_keys(session):
        signing_key.private_key = _reencrypt(keyring, signing_key.private_key, f"Signing key '{signing_key.kid}'")
    models = 0
    for model in store.models_with_endpoints(session):
        resealed = _reseal_api_key(keyring, model.api_endpoint, f"The API key of model '{model.workspace}/{model.name}'")
        if resealed is not None:
            model.api_endpoint = resealed
            models += 1
    store.flush(session)
    log.info("encryption keys rotated", extra={"secrets": len(secrets), "model_api_keys": models})
    return RotationResult(rotated_secrets=len(secrets), success=True)


def _reencrypt(keyring: Keyring, token: str, what: str) -> str:
    try:
        return keyring.reencrypt(token)
    except KeyringError:
        raise _undecryptable(what, "replace or delete it, then rotate again") from None


# --- model api_endpoint.api_key --------------------------------------------------------------------

API_KEY_FIELD = "api_key_encrypted"
"""Where a model's ``api_endpoint`` keeps its API key in the database: encrypted, never ``api_key``."""
UNDECRYPTABLE_MASK = "<cannot be decrypted: check MODELYARD_SECRET_KEY>"
"""Shown instead of the masked key when the stored key cannot be decrypted (listing models must not fail)."""


def mask_secret(secret: str) -> str:
    """All but the last four characters hidden; short secrets are hidden entirely."""
    return "*" * len(secret) if len(secret) <= 4 else "*" * (len(secret) - 4) + secret[-4:]


def seal_api_key(keyring: Keyring, api_endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """``api_endpoint`` as it is stored: a clear ``api_key`` replaced by its ciphertext in ``api_key_encrypted``."""
    if api_endpoint is None:
        return None
    sealed = {k: v for k, v in api_endpoint.items() if k not in ("api_key", API_KEY_FIELD)}
    key = api_endpoint.get("api_key")
    if key:
        sealed[API_KEY_FIELD] = keyring.encrypt(key)
    return sealed


def api_key_of(keyring: Keyring, api_endpoint: dict[str, Any] | None) -> str | None:
    """The clear API key of a stored ``api_endpoint`` (for the gateway); 409 when it cannot be decrypted.
    A row written before keys were encrypted still holds a clear ``api_key``: that is returned as is."""
    if not api_endpoint:
        return None
    token = api_endpoint.get(API_KEY_FIELD)
    if token is None:
        return api_endpoint.get("api_key") or None
    try:
        return keyring.decrypt(token)
    except KeyringError:
        raise _undecryptable("The model's API key", "set api_endpoint.api_key again with PATCH") from None


def shown_api_endpoint(keyring: Keyring, api_endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """``api_endpoint`` as responses show it: the key masked (from its decrypted value), the ciphertext gone."""
    if api_endpoint is None:
        return None
    shown = {k: v for k, v in api_endpoint.items() if k not in ("api_key", API_KEY_FIELD)}
    mask = _mask_of(keyring, api_endpoint)
    if mask is not None:
        shown["api_key"] = mask
    elif "api_key" in api_endpoint:  # a legacy empty key, shown as it was
        shown["api_key"] = api_endpoint["api_key"]
    return shown


def _mask_of(keyring: Keyring, api_endpoint: dict[str, Any]) -> str | None:
    try:
        key = api_key_of(keyring, api_endpoint)
    except SecretUndecryptable:
        return UNDECRYPTABLE_MASK
    return mask_secret(key) if key else None


def merge_api_endpoint(
    keyring: Keyring, stored: dict[str, Any] | None, given: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What a PATCH's ``api_endpoint`` (which replaces the whole object) stores. A key equal to what GET
    shows (the mask) is the client echoing it back: with the same ``url`` the stored key is kept; with
    another ``url`` it is dropped, so that a key is never sent to a host it was not given for. Any other
    key is a new key; no key means none."""
    if given is None:
        return None
    key = given.get("api_key")
    if stored and key is not None and key == _mask_of(keyring, stored):
        kept = {k: v for k, v in given.items() if k != "api_key"}
        if given.get("url") == stored.get("url"):
            legacy = stored.get("api_key")
            kept[API_KEY_FIELD] = stored.get(API_KEY_FIELD) or keyring.encrypt(legacy)
        return kept
    return seal_api_key(keyring, given)


def _reseal_api_key(keyring: Keyring, api_endpoint: dict[str, Any], what: str) -> dict[str, Any] | None:
    """A stored ``api_endpoint`` with its key re-encrypted under the primary key (a legacy clear key gets
    encrypted); ``None`` when it holds no key."""
    token = api_endpoint.get(API_KEY_FIELD)
    if token is not None:
        return {**api_endpoint, API_KEY_FIELD: _reencrypt(keyring, token, what)}
    if api_endpoint.get("api_key"):
        return seal_api_key(keyring, api_endpoint)
    return None
