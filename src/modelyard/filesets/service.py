"""Fileset rules: names, storage, uploads that cannot corrupt anything, ranges, deletes that orphan nothing.

Uploads stream: the event loop only receives the body; a worker thread hashes and writes it, a
batch at a time while the next batch arrives, to storage under a temporary name (or an uncompleted
multipart upload on S3) that becomes visible only when the whole body has arrived and matched the
client's digest. The file's row is written after that, so a listing never shows a partial file and
an interrupted upload leaves the previous version in place.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import anyio
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect, Request

from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, new_id, utcnow
from modelyard.db.session import in_db
from modelyard.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ServiceError,
    StorageUnavailable,
)
from modelyard.filesets import store
from modelyard.filesets.schemas import (
    CreateFilesetRequest,
    FileEntry,
    FileList,
    Fileset,
    UpdateFilesetRequest,
)
from modelyard.listing import ListQuery, Page
from modelyard.spec import Files
from modelyard.storage import FileStore, Writer, cached_copy, open_store
from modelyard.workspaces import store as workspace_store

PREFIX = "/apis/files/v2/workspaces"
T = TypeVar("T")
UPLOAD_BATCH = 4 << 20  # bytes of an upload handed to the storage thread at a time


def storage_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a storage operation; a backend failure (unreachable bucket, bad credentials, full disk)
    becomes a 502 that names the cause instead of an unexplained 500."""
    try:
        return fn(*args)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs/botocore raise many types
        raise StorageUnavailable(f"fileset storage failed: {type(exc).__name__}: {exc}") from None


async def storage_run(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(storage_call, fn, *args)


def to_wire(row: tables.Fileset) -> Fileset:
    return Fileset(
        id=row.id, name=row.name, workspace=row.workspace, description=row.description, purpose=row.purpose,
        metadata=row.metadata_, custom_fields=row.custom_fields, storage=row.storage,
        created_at=row.created_at.replace(tzinfo=UTC), updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def file_store(settings: Settings, row: tables.Fileset) -> FileStore:
    credentials = {"key": settings.s3_access_key_id, "secret": settings.s3_secret_access_key,
                   "endpoint_url": settings.s3_endpoint_url, "region": settings.s3_region}
    return open_store(settings.home, row.workspace, row.name, row.storage, credentials, settings.s3_part_size)


# ----- filesets --------------------------------------------------------------------------------


def create(session: Session, workspace: str, request: CreateFilesetRequest) -> Fileset:
    workspace_store.require(session, workspace)
    now = utcnow()
    storage = request.storage.model_dump(exclude_none=True)
    row = tables.Fileset(
        id=new_id("fileset"), workspace=workspace, name=request.name, description=request.description,
        purpose=request.purpose.value, storage_type=storage["type"], storage=storage, metadata_=request.metadata,
        custom_fields=request.custom_fields, created_at=now, updated_at=now,
    )
    return to_wire(store.add(session, row))


def get(session: Session, workspace: str, name: str) -> Fileset:
    workspace_store.require(session, workspace)
    return to_wire(store.get(session, workspace, name))


def list_(session: Session, workspace: str, query: ListQuery) -> Page[Fileset]:
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, None if workspace == "-" else workspace, query)
    return Page[Fileset](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo)


def update(session: Session, workspace: str, name: str, request: UpdateFilesetRequest) -> Fileset:
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    changes = request.model_dump(exclude_unset=True, mode="json")
    for field, value in changes.items():
        setattr(row, "metadata_" if field == "metadata" else field, value)
    row.updated_at = utcnow()
    session.flush()
    return to_wire(row)


def delete(session: Session, settings: Settings, workspace: str, name: str) -> Fileset:
    """Delete the fileset and its files; 409 while a model or adapter points at it."""
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    users = store.users(session, f"{workspace}/{name}")
    if users:
        raise Conflict(f"Fileset '{workspace}/{name}' is used by {', '.join(users)}; delete or repoint them first")
    wire = to_wire(row)
    store.delete(session, row)
    storage_call(file_store(settings, row).delete_all)  # after the row is gone in this transaction; a failure rolls it back
    return wire


# ----- files -----------------------------------------------------------------------------------


def check_path(path: str) -> str:
    """A relative POSIX path with no ``..``, no empty segment, no backslash and no NUL."""
    problem = None
    if not path:
        problem = "is empty"
    elif "\x00" in path:
        problem = "contains a NUL byte"
    elif "\\" in path:
        problem = "contains a backslash; use '/' between folders"
    elif path.startswith("/"):
        problem = "is absolute; give it relative to the fileset"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "has an empty, '.' or '..' segment"
    elif any(part.startswith(".tmp-") for part in path.split("/")):
        problem = "uses the reserved prefix '.tmp-'"
    if problem:
        raise InvalidRequest(f"File path {path!r} {problem}")
    return path


def _expected_digest(request: Request) -> str | None:
    """The sha256 the client announced, as hex: ``Content-Digest: sha-256=:<base64>:`` or
    ``X-Checksum-Sha256: <hex or base64>``."""
    header = request.headers.get("content-digest")
    if header:
        match = re.search(r"sha-256=:([A-Za-z0-9+/=]+):", header)
        if not match:
            raise InvalidRequest("Content-Digest must carry sha-256, as 'sha-256=:<base64 digest>:'")
        try:
            raw = base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            raise InvalidRequest("Content-Digest sha-256 value is not valid base64") from None
        if len(raw) != 32:
            raise InvalidRequest("Content-Digest sha-256 value must decode to 32 bytes")
        return raw.hex()
    header = request.headers.get("x-checksum-sha256")
    if header:
        value = header.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", value):
            return value.lower()
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise InvalidRequest("X-Checksum-Sha256 must be 64 hex characters or base64 of 32 bytes")
        return raw.hex()
    return None


@dataclass
class Located:
    row: tables.Fileset
    store: FileStore


async def locate(db: Database, settings: Settings, workspace: str, name: str) -> Located:
    def find(session: Session) -> tables.Fileset:
        workspace_store.require(session, workspace)
        return store.get(session, workspace, name)

    row = await in_db(db, find)
    return Located(row, file_store(settings, row))


def entry(row: tables.Fileset, item: tables.FilesetFile) -> FileEntry:
    return FileEntry(
        file_ref=f"{row.workspace}/{row.name}#{item.path}",
        file_url=f"{PREFIX}/{row.workspace}/filesets/{row.name}/-/{item.path}",
        path=item.path, size=item.size, sha256=item.sha256,
    )


class _Sink:
    """Hashes and writes the body, in a worker thread: the event loop only receives."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.digest = hashlib.sha256()

    def take(self, chunks: list[bytes]) -> None:
        for chunk in chunks:  # the server's own chunks, never joined: no copy of the bytes here
            self.digest.update(chunk)
            self.writer.write(chunk)


async def receive_file(body: AsyncIterator[bytes], writer: Writer, limit: int) -> tuple[int, str]:
    """Write ``body`` to ``writer``; return its size and sha256. The body is handed to a worker thread
    in batches of ``UPLOAD_BATCH`` bytes, one batch being hashed and written while the next one
    arrives (so at most two batches are held). The writer is neither committed nor aborted here, but
    no thread is still writing to it when this returns or raises."""
    sink = _Sink(writer)
    size, batched = 0, 0
    batch: list[bytes] = []
    in_flight: asyncio.Task[None] | None = None
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"File is larger than the limit of {limit} bytes "
                                      "(MODELYARD_MAX_FILE_SIZE); nothing was stored")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= UPLOAD_BATCH:
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(storage_run(sink.take, batch))
                batch, batched = [], 0
        if in_flight is not None:
            await in_flight
        if batch:
            await storage_run(sink.take, batch)
    finally:
        if in_flight is not None:  # its thread cannot be stopped: let it finish before the writer is aborted
            await asyncio.gather(in_flight, return_exceptions=True)
    return size, sink.digest.hexdigest()


async def upload(db: Database, settings: Settings, workspace: str, name: str, path: str, request: Request) -> FileEntry:
    check_path(path)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_file_size:
        raise PayloadTooLarge(f"File is {int(declared)} bytes; the limit is {settings.max_file_size} "
                              "(MODELYARD_MAX_FILE_SIZE)")
    expected = _expected_digest(request)
    located = await locate(db, settings, workspace, name)
    writer = await storage_run(located.store.writer, path)
    try:
        size, actual = await receive_file(request.stream(), writer, settings.max_file_size)
        if expected is not None and expected != actual:
            raise InvalidRequest(f"sha256 mismatch: the client announced {expected}, the body hashes to {actual}; "
                                 "nothing was stored")
        await storage_run(writer.commit)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(writer.abort)
        if isinstance(exc, ClientDisconnect):
            raise InvalidRequest("The upload was interrupted; nothing was stored") from None
        raise

    def record(session: Session) -> tables.FilesetFile:
        row = store.get(session, workspace, name)
        item = store.file(session, row.id, path)
        if item is None:
            item = tables.FilesetFile(fileset_id=row.id, path=path, size=size, sha256=actual, updated_at=utcnow())
            session.add(item)
        else:
            item.size, item.sha256, item.updated_at = size, actual, utcnow()
        row.updated_at = utcnow()
        session.flush()
        return item

    item = await in_db(db, record, write=True)
    return entry(located.row, item)


async def file_info(db: Database, settings: Settings, workspace: str, name: str, path: str) -> tuple[Located, tables.FilesetFile]:
    check_path(path)
    located = await locate(db, settings, workspace, name)
    item = await in_db(db, lambda s: store.file(s, located.row.id, path))
    if item is None:
        raise NotFound(f"File '{path}' not found in fileset '{workspace}/{name}'")
    return located, item


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` → inclusive ``(start, end)``; None for no Range."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(f"Unsupported Range {header!r}; use one range, e.g. 'bytes=0-1023'")
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"Range {header!r} is outside the file's {size} bytes")
    return start, end


async def list_files(db: Database, settings: Settings, workspace: str, name: str, path: str | None) -> FileList:
    located = await locate(db, settings, workspace, name)
    items = await in_db(db, lambda s: store.files(s, located.row.id, path))
    return FileList(data=[entry(located.row, i) for i in items])


async def delete_file(db: Database, settings: Settings, workspace: str, name: str, path: str) -> None:
    located, _ = await file_info(db, settings, workspace, name, path)

    def forget(session: Session) -> None:
        row = store.file(session, located.row.id, path)
        if row is not None:
            session.delete(row)
        session.flush()
        storage_call(located.store.delete, path)  # inside the transaction: if storage fails, the row stays

    await in_db(db, forget, write=True)


# ----- for other domains: does a fileset exist, and where are its files locally ---------------------


def require_fileset(session: Session, reference: str, *, non_empty: bool) -> tables.Fileset:
    """400 when a model or adapter names a fileset that does not exist (or, for adapters, is empty)."""
    workspace, _, name = reference.partition("/")
    row = store.find(session, workspace, name)
    if row is None:
        raise InvalidRequest(f"Fileset '{reference}' not found in workspace '{workspace}'")
    if non_empty and not store.files(session, row.id):
        raise InvalidRequest(f"Fileset '{reference}' exists but is empty")
    return row


def files_of(session: Session, settings: Settings, row: tables.Fileset) -> Files:
    """Read access to a fileset's files (sizes from the database, bytes by range from storage)."""
    filestore = file_store(settings, row)
    return Files(sizes={f.path: f.size for f in store.files(session, row.id)}, read=filestore.read_range)


def local_folder(session: Session, settings: Settings, reference: str, *, label: str, copy: bool) -> Path:
    """A local folder holding the fileset's files, for an engine. Local filesets are used in place
    unless ``copy`` (adapters are copied so a later upload never changes a loaded adapter's files);
    S3 filesets are downloaded into the cache once per content."""
    row = require_fileset(session, reference, non_empty=True)
    files = store.files(session, row.id)
    filestore = file_store(settings, row)
    if filestore.local:
        folder = Path(filestore.root)
        return cached_copy(settings.home, label, folder) if copy else folder
    entries = [(f.path, f.size, f.sha256) for f in files]
    return cached_copy(settings.home, label, filestore, entries)
