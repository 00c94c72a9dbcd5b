"""Fileset storage over fsspec (local disk or S3): content-addressed blobs, and local folders for engines.

Bytes live in a *blob area*: ``{home}/blobs`` for every ``local`` fileset, and
``s3://<bucket>/<prefix>/.modelyard/blobs`` for the ``s3`` filesets on that bucket and prefix
(credentials come from settings or the environment, never from the fileset row). A blob is stored
once under its sha256, ``<aa>/<sha256>``, and never changes: it is written under a temporary name
(locally a file renamed into place; on S3 a completed multipart upload to a temporary key, then
copied) and appears only whole. Which path of which fileset holds which blob is the database's
business (``fileset_files``); :meth:`BlobStore.sweep` removes what no row references.

:class:`FileStore` reads the layout before blobs (``<root>/<ws>/<name>/<path>``), to move such
files into blobs. Engines read files from local disk: :func:`cached_copy` builds a folder with every
file at its path (hard links to local blobs, copies of S3 ones) under ``{home}/cache``, renamed
into place, named by a fingerprint of the content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
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


@dataclass
class FileStore:
    """The files of one fileset in the layout before blobs, addressed by relative POSIX path."""

    fs: Any  # fsspec.AbstractFileSystem
    root: str
    local: bool
    part_size: int = 8 << 20

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def open(self, path: str) -> BinaryIO:
        return self.fs.open(self._full(path), "rb")

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with self.open(path) as handle:
            handle.seek(start)
            return handle.read(length)

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


# ----- content-addressed blobs ----------------------------------------------------------------


def blob_area(home: Path, storage: dict[str, Any] | None) -> str:
    """A key naming the blob area of a fileset's storage: filesets on one area share (and dedupe) blobs."""
    storage = storage or {"type": "local"}
    if storage.get("type", "local") == "local":
        return "local"
    prefix = (storage.get("prefix") or "").strip("/")
    return f"s3|{storage.get('endpoint_url') or ''}|{storage['bucket']}|{prefix}"


@dataclass
class BlobStore:
    """Bytes stored once under their sha256: ``<root>/<aa>/<sha256>``; temporaries are ``<root>/.tmp-*``.

    ``local``: root is ``{home}/blobs``; a blob is written under a temporary name and renamed into
    place. ``s3``: root is ``<bucket>/<prefix>/.modelyard/blobs``; a blob is a completed multipart
    upload to a temporary key, copied to its final key. A blob's bytes never change once it exists.
    """

    fs: Any
    root: str
    local: bool
    part_size: int = 8 << 20

    def key(self, sha256: str) -> str:
        return f"{self.root}/{sha256[:2]}/{sha256}"

    def writer(self) -> BlobWriter:
        tmp = f"{self.root}/{TMP_PREFIX}{uuid.uuid4().hex}"
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            return _LocalBlobWriter(self, Path(tmp))
        return _S3BlobWriter(self, tmp, self.fs.open(tmp, "wb", block_size=self.part_size))

    def open(self, sha256: str) -> BinaryIO:
        return self.fs.open(self.key(sha256), "rb")

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        with self.open(sha256) as handle:
            handle.seek(start)
            return handle.read(length)

    def exists(self, sha256: str) -> bool:
        return bool(self.fs.exists(self.key(sha256)))

    def put_file(self, source: Path | str, sha256: str, *, move: bool = False) -> None:
        """Store an existing file (the legacy layout's) as the blob ``sha256``."""
        if self.local:
            target = Path(self.key(sha256))
            target.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(source, target)
            else:
                shutil.copyfile(source, target)
            os.chmod(target, 0o444)
        else:
            self.fs.copy(str(source), self.key(sha256))

    def materialise(self, sha256: str, target: Path) -> None:
        """The blob at ``target``: a hard link where possible (same disk), else a copy."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.local:
            try:
                os.link(self.key(sha256), target)
                return
            except OSError:
                pass
        with self.open(sha256) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)

    def _entries(self) -> Iterator[tuple[str, str, float]]:
        """``(kind, path, modified)`` for every temporary (``tmp``) and blob (``blob``) in the area."""
        if self.local:
            root = Path(self.root)
            if not root.is_dir():
                return
            for entry in os.scandir(root):
                if entry.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        yield "tmp", entry.path, entry.stat().st_mtime
                elif entry.is_dir() and len(entry.name) == 2:
                    for blob in os.scandir(entry.path):
                        with contextlib.suppress(OSError):
                            kind = "tmp" if blob.name.startswith(TMP_PREFIX) else "blob"
                            yield kind, blob.path, blob.stat().st_mtime
            return
        if not self.fs.exists(self.root):
            return
        for path, info in self.fs.find(self.root, detail=True).items():
            name = path.rsplit("/", 1)[-1]
            modified = info.get("LastModified")
            stamp = modified.timestamp() if modified is not None else time.time()
            yield ("tmp" if name.startswith(TMP_PREFIX) else "blob"), path, stamp

    def sweep(self, referenced: set[str], grace: float, marks: dict[str, float]) -> dict[str, int]:
        """Remove temporaries older than ``grace`` seconds, and blobs no row references that were seen
        unreferenced (``marks``: sha256 -> when first seen so, kept by the caller between passes) at
        least ``grace`` seconds ago and were written more than ``grace`` ago. A blob an upload is
        publishing right now is new, so it stays; a download that opened a blob keeps reading it
        (locally the open file survives; on S3 the grace covers it)."""
        now = time.time()
        removed = {"tmp": 0, "blob": 0}
        seen: set[str] = set()
        for kind, path, modified in list(self._entries()):
            if kind == "tmp":
                if now - modified >= grace:
                    with contextlib.suppress(OSError, FileNotFoundError):
                        self.fs.rm(path)
                        removed["tmp"] += 1
                continue
            sha = path.rsplit("/", 1)[-1]
            seen.add(sha)
            if sha in referenced:
                marks.pop(sha, None)
                continue
            first = marks.setdefault(sha, now)
            if now - first < grace or now - modified < grace:
                continue
            if self._remove_if_stale(path, grace):
                removed["blob"] += 1
                marks.pop(sha, None)
        for sha in set(marks) - seen:
            marks.pop(sha, None)
        if not self.local:
            self._abort_stale_multipart(grace)
        return removed

    def _remove_if_stale(self, path: str, grace: float) -> bool:
        if not self.local:
            # S3 has no atomic rename: look again just before removing (an upload may have copied the
            # same bytes there since the listing); what is left is a window of one request
            self.fs.invalidate_cache(path)
            modified = self.fs.info(path).get("LastModified")
            if modified is not None and time.time() - modified.timestamp() < grace:
                return False
            self.fs.rm(path)
            return True
        # take the blob away atomically, then look at what was taken: an upload may have just
        # published the same bytes again (a fresh file), which goes back
        trash = f"{self.root}/{TMP_PREFIX}gone-{uuid.uuid4().hex}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False
        if time.time() - os.stat(trash).st_mtime < grace:
            try:
                os.link(trash, path)
            except FileExistsError:
                pass
            os.unlink(trash)
            return False
        os.unlink(trash)
        return True

    def _abort_stale_multipart(self, grace: float) -> None:
        bucket, _, prefix = self.root.partition("/")
        now = time.time()
        with contextlib.suppress(Exception):
            for upload in self.fs.list_multipart_uploads(bucket):
                if not upload.get("Key", "").startswith(prefix + "/"):
                    continue
                started = upload.get("Initiated")
                if started is None or now - started.timestamp() >= grace:
                    self.fs.abort_mpu(bucket, upload["Key"], upload["UploadId"])


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self, sha256: str) -> None: ...
    def abort(self) -> None: ...


class _LocalBlobWriter:
    def __init__(self, store: BlobStore, tmp: Path) -> None:
        self.store = store
        self.tmp = tmp
        self.handle = open(tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self, sha256: str) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.chmod(self.tmp, 0o444)  # blobs never change; cache folders hard-link them
        target = Path(self.store.key(sha256))
        target.parent.mkdir(exist_ok=True)
        # same bytes if it exists: replacing it is harmless (an open reader keeps its file) and makes it new
        os.replace(self.tmp, target)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class _S3BlobWriter:
    def __init__(self, store: BlobStore, tmp: str, handle: Any) -> None:
        self.store = store
        self.tmp = tmp
        self.handle = handle

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self, sha256: str) -> None:
        self.handle.close()  # completes the multipart upload of the temporary object
        try:
            self.store.fs.copy(self.tmp, self.store.key(sha256))  # server-side; the blob appears whole
        finally:
            with contextlib.suppress(Exception):
                self.store.fs.rm(self.tmp)

    def abort(self) -> None:
        self.handle.discard()  # aborts the multipart upload; nothing becomes visible
        self.handle.closed = True  # so that garbage collection never tries to flush what was discarded


def open_blobs(home: Path, storage: dict[str, Any] | None, credentials: dict[str, str | None] | None = None,
               part_size: int = 8 << 20) -> BlobStore:
    """The :class:`BlobStore` of the area a fileset with ``storage`` keeps its bytes in."""
    storage = storage or {"type": "local"}
    if storage.get("type", "local") == "local":
        from fsspec.implementations.local import LocalFileSystem

        return BlobStore(LocalFileSystem(), str(Path(home) / "blobs"), local=True, part_size=part_size)
    legacy = open_store(home, "-", "-", storage, credentials, part_size)
    bucket_prefix = legacy.root.rsplit("/", 2)[0]  # drop the "-/-" of the legacy per-fileset root
    return BlobStore(legacy.fs, f"{bucket_prefix}/.modelyard/blobs", local=False, part_size=part_size)


# ----- local copies for engines ------------------------------------------------------------------


def fingerprint(entries: list[tuple[str, int, str]]) -> str:
    """Changes whenever a file is added, removed or rewritten (from ``(path, size, sha256)``)."""
    digest = hashlib.sha256()
    for path, size, version in sorted(entries):
        digest.update(f"{path}\0{size}\0{version}\n".encode())
    return digest.hexdigest()[:16]


def cached_copy(home: Path, label: str, blobs: BlobStore, entries: list[tuple[str, int, str]]) -> Path:
    """A complete local folder of a fileset for an engine to read (made once per content): every
    ``(path, size, sha256)`` of ``entries`` at its path, hard-linked from local blobs (copied from
    S3), built in a temporary folder renamed into place, named by a fingerprint of the content."""
    if not entries:
        raise FilesetMissing(f"fileset {label} is empty")
    cache = Path(home) / "cache" / "filesets"
    target = cache / f"{label}-{fingerprint(entries)}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f"{TMP_PREFIX}{label}-{uuid.uuid4().hex}"
    try:
        for path, _, sha256 in entries:
            blobs.materialise(sha256, staging / path)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # someone else finished the same copy first: theirs is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
