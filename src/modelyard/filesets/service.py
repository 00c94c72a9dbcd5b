"""Fileset rules: names, storage, uploads that cannot corrupt anything, ranges, deletes that orphan nothing.

Bytes are content-addressed: a file row ``(fileset, path) -> (size, sha256)`` points at the blob
``<aa>/<sha256>`` of its storage's blob area (see :mod:`modelyard.storage`). Uploads stream: the
event loop only receives the body; a worker thread hashes and writes it, a batch at a time while the
next batch arrives, to a temporary blob that is published under its sha256 only when the whole body
has arrived and matched the client's digest. Then one transaction points the path at the blob (an
upsert). So a row and its bytes never disagree, the last PUT to commit wins whole, a failed commit
leaves the previous version, and a download reads the blob its row named when it started.
Blobs no row references are removed by the sweeper (:mod:`modelyard.filesets.blobs`).
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
from typing import Any, BinaryIO, TypeVar

import anyio
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect, Request

from modelyard.auth.principal import Access
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
    FilesetMetadata,
    UpdateFilesetRequest,
)
from modelyard.listing import ListQuery, Page
from modelyard.spec import Files
from modelyard.storage import BlobStore, BlobWriter, FileStore, blob_area, cached_copy, open_blobs, open_store
from modelyard.storage.policy import check_storage
from modelyard.workspaces import store as workspace_store

PREFIX = "/apis/files/v2/workspaces"
T = TypeVar("T")
UPLOAD_BATCH = 4 << 20  # bytes of an upload handed to the storage thread at a time
MAX_SEGMENT = 255  # characters in one path segment (what file systems allow in a name)
MAX_PATH = 1024  # characters in a whole path (the column's size)
MAX_RANGE_DIGITS = 20  # a byte offset never needs more (2^64 has 20 digits)


def storage_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a storage operation; a backend failure (unreachable bucket, bad credentials, full disk)
    becomes a 502 that names the cause instead of an unexplained 500."""
    try:
        return fn(*args)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs/botocore raise many types
        raise StorageUnavailable(f"fileset storage failed: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """The failure without the server's file system paths (an OSError's filename is left out)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}" + (f" (errno {exc.errno})" if exc.errno else "")
    return f"{type(exc).__name__}: {exc}"[:300]


async def storage_run(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(storage_call, fn, *args)


def to_wire(row: tables.Fileset) -> Fileset:
    return Fileset(
        id=row.id, name=row.name, workspace=row.workspace, description=row.description or "", purpose=row.purpose,
        metadata=FilesetMetadata(**(row.metadata_ or {})), custom_fields=row.custom_fields or {},
        project=row.project or "", storage=row.storage,
        created_at=row.created_at.replace(tzinfo=UTC), updated_at=row.updated_at.replace(tzinfo=UTC),
    )


def _credentials(settings: Settings) -> dict[str, str | None]:
    return {"key": settings.s3_access_key_id, "secret": settings.s3_secret_access_key,
            "endpoint_url": settings.s3_endpoint_url, "region": settings.s3_region}


def file_store(settings: Settings, row: tables.Fileset) -> FileStore:
    """The fileset's folder in the old per-path layout (only read to move its files into blobs)."""
    return open_store(settings.home, row.workspace, row.name, row.storage, _credentials(settings),
                      settings.s3_part_size)


def blob_store(settings: Settings, storage: dict[str, Any] | None) -> BlobStore:
    """The blob area of a fileset with ``storage``."""
    check_storage(settings, storage)  # an endpoint or bucket the operator has since disallowed: 400, no request
    return open_blobs(settings.home, storage, _credentials(settings), settings.s3_part_size)


# ----- filesets --------------------------------------------------------------------------------


def create(session: Session, workspace: str, request: CreateFilesetRequest, *, settings: Settings) -> Fileset:
    workspace_store.require(session, workspace)
    now = utcnow()
    storage = request.storage.model_dump(exclude_none=True)
    check_storage(settings, storage)  # before anything is stored or requested
    row = tables.Fileset(
        id=new_id("fileset"), workspace=workspace, name=request.name, description=request.description,
        project=request.project,
        purpose=request.purpose.value, storage_type=storage["type"], storage=storage, metadata_=request.metadata,
        custom_fields=request.custom_fields, created_at=now, updated_at=now,
    )
    store.remember_area(session, blob_area(Path("."), storage), storage, now)  # for the sweeper, for good
    return to_wire(store.add(session, row))


def get(session: Session, workspace: str, name: str) -> Fileset:
    workspace_store.require(session, workspace)
    return to_wire(store.get(session, workspace, name))


def list_(session: Session, workspace: str, query: ListQuery, access: Access) -> Page[Fileset]:
    """One workspace's filesets; ``-``: every workspace the caller can read."""
    if workspace != "-":
        workspace_store.require(session, workspace)
    rows, pagination = store.list_(session, workspace if workspace != "-" else access.workspaces(), query)
    return Page[Fileset](data=[to_wire(r) for r in rows], pagination=pagination, sort=query.sort, filter=query.echo or None)


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
    """Delete the fileset and its file rows in one transaction; 409 while a model or adapter points at
    it. Its blobs are left to the sweeper (other filesets may share them; a download may be reading)."""
    workspace_store.require(session, workspace)
    row = store.get(session, workspace, name)
    users = store.users(session, f"{workspace}/{name}")
    if users:
        raise Conflict(f"Fileset '{workspace}/{name}' is used by {', '.join(users)}; delete or repoint them first")
    wire = to_wire(row)
    store.delete(session, row)
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
    elif len(path) > MAX_PATH:
        problem = f"is longer than {MAX_PATH} characters"
    elif any(len(part) > MAX_SEGMENT for part in path.split("/")):
        problem = f"has a segment longer than {MAX_SEGMENT} characters"
    if problem:
        shown = path if len(path) <= 200 else path[:200] + "..."
        raise InvalidRequest(f"File path {shown!r} {problem}")
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
    blobs: BlobStore


async def locate(db: Database, settings: Settings, workspace: str, name: str) -> Located:
    def find(session: Session) -> tables.Fileset:
        workspace_store.require(session, workspace)
        return store.get(session, workspace, name)

    row = await in_db(db, find)
    return Located(row, blob_store(settings, row.storage))


def entry(row: tables.Fileset, item: tables.FilesetFile, cache_status: str | None = None) -> FileEntry:
    return FileEntry(
        file_ref=f"{row.workspace}/{row.name}#{item.path}",
        file_url=f"{PREFIX}/{row.workspace}/filesets/{row.name}/-/{item.path}",
        path=item.path, size=item.size, cache_status=cache_status, sha256=item.sha256,
    )


class _Sink:
    """Hashes and writes the body, in a worker thread: the event loop only receives."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.digest = hashlib.sha256()

    def take(self, chunks: list[bytes]) -> None:
        for chunk in chunks:  # the server's own chunks, never joined: no copy of the bytes here
            self.digest.update(chunk)
            self.writer.write(chunk)


async def receive_file(body: AsyncIterator[bytes], writer: BlobWriter, limit: int) -> tuple[int, str]:
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
    writer = await storage_run(located.blobs.writer)
    try:
        size, actual = await receive_file(request.stream(), writer, settings.max_file_size)
        if expected is not None and expected != actual:
            raise InvalidRequest(f"sha256 mismatch: the client announced {expected}, the body hashes to {actual}; "
                                 "nothing was stored")
        await storage_run(writer.commit, actual)  # the blob is complete under its sha256
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(writer.abort)
        if isinstance(exc, ClientDisconnect):
            raise InvalidRequest("The upload was interrupted; nothing was stored") from None
        raise
    await in_db(db, lambda session: record(session, located.row, path, size, actual), write=True)
    item = tables.FilesetFile(fileset_id=located.row.id, path=path, size=size, sha256=actual)
    return entry(located.row, item)


def record(session: Session, row: tables.Fileset, path: str, size: int, sha256: str) -> None:
    """Point ``path`` at the (complete) blob ``sha256``, in the caller's transaction. A fileset deleted
    meanwhile is 404, and its blob is left to the sweeper."""
    now = utcnow()
    if not store.touch(session, row.id, now):
        raise NotFound(f"Fileset '{row.name}' not found in workspace '{row.workspace}' "
                       "(it was deleted during the upload); nothing was stored")
    store.put_file(session, row.id, path, size, sha256, now)


async def file_info(db: Database, settings: Settings, workspace: str, name: str, path: str) -> tuple[Located, tables.FilesetFile]:
    check_path(path)
    located = await locate(db, settings, workspace, name)
    item = await in_db(db, lambda s: store.file(s, located.row.id, path))
    if item is None:
        raise NotFound(f"File '{path}' not found in fileset '{workspace}/{name}'")
    return located, item


async def open_blob(located: Located, item: tables.FilesetFile, reference: str) -> BinaryIO:
    """An open handle on the blob of ``item`` (a local handle keeps reading even if the blob is swept)."""
    def opening() -> BinaryIO:
        try:
            return located.blobs.open(item.sha256)
        except FileNotFoundError:
            raise StorageUnavailable(f"file '{item.path}' is listed in fileset '{reference}' but its bytes "
                                     f"(blob {item.sha256}) are missing from its storage") from None

    return await storage_run(opening)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` → inclusive ``(start, end)``; None for no Range.
    Offsets longer than ``MAX_RANGE_DIGITS`` digits are 416, never parsed."""
    if not header:
        return None
    digits = MAX_RANGE_DIGITS
    match = re.fullmatch(rf"\s*bytes=(\d{{0,{digits}}})-(\d{{0,{digits}}})\s*", header[:200])
    if len(header) > 200 or not match or (not match.group(1) and not match.group(2)):
        shown = header if len(header) <= 60 else header[:60] + "..."
        raise RangeNotSatisfiable(f"Unsupported Range {shown!r}; use one range of at most {digits}-digit "
                                  "offsets, e.g. 'bytes=0-1023'")
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
    return FileList(data=[entry(located.row, i, "not_cacheable") for i in items])


async def delete_file(db: Database, settings: Settings, workspace: str, name: str, path: str) -> FileEntry:
    """Forget the file; answers it as it was (the reference's 200 with the deleted file)."""
    located, item = await file_info(db, settings, workspace, name, path)

    def forget(session: Session) -> None:  # the blob is left to the sweeper
        row = store.file(session, located.row.id, path)
        if row is not None:
            session.delete(row)
        session.flush()

    await in_db(db, forget, write=True)
    return entry(located.row, item)


# ----- for other domains: does a fileset exist, and where are its files locally ---------------------


def require_fileset(session: Session, reference: str, *, non_empty: bool, access: Access) -> tables.Fileset:
    """400 when a model or adapter names a fileset that does not exist (or, for adapters, is empty); one
    in a workspace the caller cannot read is answered the same way (its name does not leak)."""
    workspace, _, name = reference.partition("/")
    row = store.find(session, workspace, name)
    if row is None or not access.can(workspace):
        raise InvalidRequest(f"Fileset '{reference}' not found in workspace '{workspace}'")
    if non_empty and not store.files(session, row.id):
        raise InvalidRequest(f"Fileset '{reference}' exists but is empty")
    return row


def files_of(session: Session, settings: Settings, row: tables.Fileset) -> Files:
    """Read access to a fileset's files (sizes from the database, bytes by range from their blobs)."""
    blobs = blob_store(settings, row.storage)
    items = store.files(session, row.id)
    shas = {f.path: f.sha256 for f in items}
    return Files(sizes={f.path: f.size for f in items},
                 read=lambda path, start, length: blobs.read_range(shas[path], start, length))


def local_folder(session: Session, settings: Settings, reference: str, *, label: str, copy: bool = True) -> Path:
    """A local folder holding the fileset's files at their paths, for an engine: made once per
    content under ``{home}/cache/filesets`` (hard links to local blobs, copies of S3 ones), renamed
    into place. Blobs never change, so a later upload never changes a folder an engine reads
    (``copy`` is kept for callers; every folder is such a snapshot)."""
    row = require_fileset(session, reference, non_empty=True, access=Access.local())  # the server's own read
    entries = [(f.path, f.size, f.sha256) for f in store.files(session, row.id)]
    return cached_copy(settings.home, label, blob_store(settings, row.storage), entries)
