"""Fileset storage: one small interface over fsspec, local disk or S3, and local copies for engines.

A fileset's files live under a root chosen by its ``storage``: ``local`` is the folder
``{home}/filesets/<ws>/<name>``; ``s3`` is ``s3://<bucket>/<prefix>/<ws>/<name>`` (credentials come
from settings or the environment, never from the fileset row). Writes are atomic: a local file is
written under a temporary name and renamed into place when complete; an S3 object only appears when
its (multipart) upload completes, and an aborted upload is discarded. So an interrupted upload leaves
the previous version, or nothing, visible.

Engines read files from local disk: :func:`cached_copy` makes a complete local copy under
``{home}/cache`` (a temporary folder renamed into place, named by a fingerprint of the content).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20


class FilesetMissing(LookupError):
    """The fileset has no files where they should be; the message names it."""


def fileset_dir(home: Path, reference: str) -> Path:
    """The local folder of fileset ``ws/name`` on local storage."""
    workspace, _, name = reference.partition("/")
    return Path(home) / "filesets" / workspace / name


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@dataclass
class FileStore:
    """The files of one fileset, addressed by relative POSIX path."""

    fs: Any  # fsspec.AbstractFileSystem
    root: str
    local: bool
    part_size: int = 8 << 20

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def writer(self, path: str) -> Writer:
        if self.local:
            return _LocalWriter(Path(self._full(path)))
        return _S3Writer(self.fs.open(self._full(path), "wb", block_size=self.part_size))

    def open(self, path: str) -> BinaryIO:
        return self.fs.open(self._full(path), "rb")

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with self.open(path) as handle:
            handle.seek(start)
            return handle.read(length)

    def iter_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive, in chunks."""
        with self.open(path) as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                data = handle.read(min(CHUNK, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._full(path)))

    def delete(self, path: str) -> None:
        if self.fs.exists(self._full(path)):
            self.fs.rm(self._full(path))

    def delete_all(self) -> None:
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)

    def download(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.open(path) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)


class _LocalWriter:
    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = target.parent / f"{TMP_PREFIX}{target.name}-{uuid.uuid4().hex}"
        self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class _S3Writer:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.close()  # completes the (multipart) upload: only now does the object exist

    def abort(self) -> None:
        self.handle.discard()  # aborts the multipart upload; nothing becomes visible
        self.handle.closed = True  # so that garbage collection never tries to flush what was discarded


def open_store(home: Path, workspace: str, name: str, storage: dict[str, Any] | None,
               credentials: dict[str, str | None] | None = None, part_size: int = 8 << 20) -> FileStore:
    """The :class:`FileStore` of fileset ``workspace/name`` with the given ``storage`` settings."""
    storage = storage or {"type": "local"}
    if storage.get("type", "local") == "local":
        from fsspec.implementations.local import LocalFileSystem

        return FileStore(LocalFileSystem(), str(fileset_dir(home, f"{workspace}/{name}")), local=True,
                         part_size=part_size)
    import s3fs

    creds = credentials or {}
    client_kwargs: dict[str, Any] = {}
    endpoint = storage.get("endpoint_url") or creds.get("endpoint_url")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = storage.get("region") or creds.get("region")
    if region:
        client_kwargs["region_name"] = region
    # fixed_upload_size: every part is exactly part_size (the last one smaller), whatever the chunking
    fs = s3fs.S3FileSystem(key=creds.get("key"), secret=creds.get("secret"), client_kwargs=client_kwargs,
                           skip_instance_cache=True, fixed_upload_size=True)
    prefix = (storage.get("prefix") or "").strip("/")
    root = "/".join(p for p in (storage["bucket"], prefix, workspace, name) if p)
    return FileStore(fs, root, local=False, part_size=part_size)


# ----- local copies for engines ------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(TMP_PREFIX))


def fingerprint(entries: list[tuple[str, int, str]]) -> str:
    """Changes whenever a file is added, removed or rewritten (from ``(path, size, version)``)."""
    digest = hashlib.sha256()
    for path, size, version in sorted(entries):
        digest.update(f"{path}\0{size}\0{version}\n".encode())
    return digest.hexdigest()[:16]


def local_fingerprint(folder: Path) -> str:
    return fingerprint([(p.relative_to(folder).as_posix(), p.stat().st_size, str(p.stat().st_mtime_ns))
                        for p in _files(folder)])


def cached_copy(home: Path, label: str, source: FileStore | Path, entries: list[tuple[str, int, str]] | None = None) -> Path:
    """A complete local copy of a fileset for an engine to read (made once per content).

    ``source`` is a local folder, or a :class:`FileStore` plus its ``entries`` ``(path, size, sha256)``.
    """
    if isinstance(source, Path):
        if not _files(source):
            raise FilesetMissing(f"fileset folder {source} is empty")
        key = local_fingerprint(source)
    else:
        if not entries:
            raise FilesetMissing(f"fileset {label} is empty")
        key = fingerprint(entries)
    cache = Path(home) / "cache" / "filesets"
    target = cache / f"{label}-{key}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f"{TMP_PREFIX}{label}-{uuid.uuid4().hex}"
    try:
        if isinstance(source, Path):
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(f"{TMP_PREFIX}*"))
        else:
            for path, _, _ in entries or []:
                source.download(path, staging / path)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # someone else finished the same copy first: theirs is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
