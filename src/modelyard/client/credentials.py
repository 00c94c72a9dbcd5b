"""The credentials file: ``MODELYARD_HOME/credentials`` (``~/.modelyard/credentials`` by default).

JSON, mode 0600::

    {"default": {"api_key": "<jwt>", "principal": "admin"},
     "servers": {"http://127.0.0.1:8000": {"api_key": "<jwt>", "principal": "alice"}}}

The server writes ``default`` on its first start (the PlatformAdmin key it creates, through
``save_default``); ``modelyard login`` writes one entry of ``servers`` per URL (``save_login``). The SDK
looks up a key with ``load_api_key``: the entry of the server's URL first, then ``default``.

Every write replaces the whole file at once (a temporary file in the same folder, created 0600, then
``os.replace``), under an advisory lock, and keeps the entries it does not change: a reader never sees
half a file, and a login and a server start at the same moment do not lose each other's entry.

Standard library only: the server imports this module too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelyard.client.errors import ModelyardError

FILE_NAME = "credentials"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CredentialsError(ModelyardError):
    """The credentials file exists but cannot be read as the JSON object it should be."""


def default_home() -> Path:
    """``MODELYARD_HOME``, else ``~/.modelyard`` (what the server's settings use too)."""
    configured = os.environ.get("MODELYARD_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".modelyard"


def credentials_path(home: str | os.PathLike[str] | None = None) -> Path:
    return (Path(home).expanduser() if home is not None else default_home()) / FILE_NAME


def normalize_url(base_url: str) -> str:
    """The key under ``servers``: scheme and host lower-cased, a default port dropped, no trailing slash
    (``HTTP://LocalHost:80/`` and ``http://localhost`` are the same server)."""
    raw = base_url.strip()
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def read_credentials(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The file's content; ``{}`` when there is none."""
    path = credentials_path(home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CredentialsError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise CredentialsError(f"{path} should hold a JSON object; fix or remove it")
    return data


def _entry_key(entry: Any) -> str | None:
    if isinstance(entry, dict) and isinstance(entry.get("api_key"), str) and entry["api_key"]:
        return str(entry["api_key"])
    return None


def load_api_key(base_url: str, home: str | os.PathLike[str] | None = None) -> str | None:
    """The key saved for ``base_url`` (``servers``), else the ``default`` one (the local server's first
    admin key: only for a loopback URL, so it is never sent to another machine), else None."""
    data = read_credentials(home)
    servers = data.get("servers")
    if isinstance(servers, dict):
        wanted = normalize_url(base_url)
        for url, entry in servers.items():
            if isinstance(url, str) and normalize_url(url) == wanted and _entry_key(entry):
                return _entry_key(entry)
    host = (urlsplit(base_url).hostname or "").lower()
    if host in ("127.0.0.1", "::1", "localhost") or host.endswith(".localhost"):
        return _entry_key(data.get("default"))
    return None


def save_login(base_url: str, api_key: str, principal: str | None,
               home: str | os.PathLike[str] | None = None) -> Path:
    """Save the key for ``base_url`` under ``servers`` (replacing that server's entry only)."""

    def change(data: dict[str, Any]) -> None:
        servers = data.get("servers")
        if not isinstance(servers, dict):
            servers = data["servers"] = {}
        wanted = normalize_url(base_url)
        for url in [u for u in servers if isinstance(u, str) and normalize_url(u) == wanted]:
            del servers[url]
        servers[wanted] = {"api_key": api_key, "principal": principal}

    return _update(home, change)


def save_default(home: str | os.PathLike[str] | None, api_key: str, principal: str | None) -> Path:
    """Save the ``default`` key (the server's first PlatformAdmin key), keeping ``servers``."""

    def change(data: dict[str, Any]) -> None:
        data["default"] = {"api_key": api_key, "principal": principal}

    return _update(home, change)


def _update(home: str | os.PathLike[str] | None, change: Any) -> Path:
    path = credentials_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path):
        data = read_credentials(home)
        change(data)
        _write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _write_atomic(path: Path, text: str) -> None:
    """A temporary file beside ``path`` (mkstemp creates it 0600), flushed to disk, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename to survive a crash (POSIX); not possible everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An advisory lock on ``<file>.lock`` between writers (read, change, write is one step)."""
    try:
        import fcntl
    except ImportError:  # Windows: the replace is still atomic, only concurrent writers may race
        yield
        return
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


__all__ = [
    "CredentialsError",
    "credentials_path",
    "default_home",
    "load_api_key",
    "normalize_url",
    "read_credentials",
    "save_default",
    "save_login",
]
