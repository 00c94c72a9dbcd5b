"""Encryption at rest for secrets and signing keys: Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``) over a keyring whose first key encrypts and whose every key decrypts.

The keyring comes from ``MODELYARD_SECRET_KEY`` (comma-separated Fernet keys) or, when that is unset,
from ``{home}/secret.key``, generated on first use with mode 0600. Rotating prepends a new key to
the file (or, with the environment variable, the operator puts the new key first) and re-encrypts
every value under it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyringError(Exception):
    """A stored value cannot be decrypted with any key of the keyring (a lost or wrong key)."""


class Keyring:
    def __init__(self, keys: list[bytes], *, path: Path | None = None) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._keys = keys
        self._path = path
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def load(cls, secret_key: str | None, home: Path) -> Keyring:
        if secret_key:
            keys = [k.strip().encode() for k in secret_key.split(",") if k.strip()]
            try:
                return cls(keys)
            except ValueError as exc:
                raise ValueError(f"MODELYARD_SECRET_KEY must be Fernet keys, comma-separated: {exc}") from None
        path = home / "secret.key"
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key() + b"\n")
        keys = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
        return cls(keys, path=path)

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise KeyringError("a stored value cannot be decrypted with the configured secret keys") from None

    def reencrypt(self, token: str) -> str:
        """``token`` encrypted again under the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise KeyringError("a stored value cannot be decrypted with the configured secret keys") from None

    def add_primary(self) -> Keyring:
        """A keyring with a new first key, written to the key file first when there is one (with the
        environment variable, the operator supplies the new key instead: the keyring is returned as is)."""
        if self._path is None:
            return self
        keys = [Fernet.generate_key(), *self._keys]
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(keys) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        return Keyring(keys, path=self._path)
