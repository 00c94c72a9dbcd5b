"""Where fileset files live on this machine, and atomic local copies of them for engines.

A fileset ``ws/name`` on local storage is the folder ``{home}/filesets/ws/name``. Engines never
read it in place: serving an adapter first copies its fileset into ``{home}/cache/adapters``
under a name that includes a fingerprint of the files, via a temporary folder renamed into place,
so an engine never sees a half-copied adapter and a changed fileset gets a fresh copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path


class FilesetMissing(LookupError):
    """The fileset has no files on this machine; the message names it."""


def fileset_dir(home: Path, reference: str) -> Path:
    """The local folder of fileset ``ws/name``."""
    workspace, _, name = reference.partition("/")
    return Path(home) / "filesets" / workspace / name


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def require_files(home: Path, reference: str) -> Path:
    folder = fileset_dir(home, reference)
    if not folder.is_dir():
        raise FilesetMissing(f"Fileset '{reference}' has no files on this server (expected {folder})")
    if not _files(folder):
        raise FilesetMissing(f"Fileset '{reference}' exists but is empty")
    return folder


def fingerprint(folder: Path) -> str:
    """Changes whenever a file is added, removed, resized or rewritten."""
    digest = hashlib.sha256()
    for path in _files(folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_copy(home: Path, reference: str, label: str) -> Path:
    """A complete local copy of fileset ``reference`` for an engine to read (made once per content)."""
    source = require_files(home, reference)
    cache = Path(home) / "cache" / "adapters"
    target = cache / f"{label}-{fingerprint(source)}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".tmp-{label}-{uuid.uuid4().hex}"
    try:
        shutil.copytree(source, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # someone else finished the same copy first: theirs is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
