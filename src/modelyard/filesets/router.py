"""``/apis/files/v2/workspaces/{ws}/filesets``: filesets and their files (the reference's files service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from modelyard.auth.deps import AccessDep
from modelyard.db.session import SessionDep
from modelyard.filesets import blobs, service, store
from modelyard.filesets.disposition import download_headers
from modelyard.filesets.schemas import (
    CreateFilesetRequest,
    FileEntry,
    FileList,
    Fileset,
    UpdateFilesetRequest,
)
from modelyard.listing import ListQuery, Page, query_dependency
from modelyard.storage import CHUNK

router = APIRouter(prefix="/apis/files/v2/workspaces/{workspace}/filesets", tags=["filesets"], lifespan=blobs.lifespan)
ListParams = Annotated[ListQuery, Depends(query_dependency(store.FILTERS, default_page_size=10, max_page_size=100,
                                                        default_sort="-created_at"))]
_list = {"response_model_exclude_none": True}  # list items drop nulls; a single entity carries every key


@router.post("", response_model=Fileset)
def create_fileset(workspace: str, body: CreateFilesetRequest, session: SessionDep, request: Request) -> Fileset:
    """Create a fileset (200, as the reference answers). ``storage`` defaults to local disk."""
    return service.create(session, workspace, body, settings=request.app.state.settings)


@router.get("", response_model=Page[Fileset], **_list)
def list_filesets(workspace: str, session: SessionDep, query: ListParams, access: AccessDep) -> Page[Fileset]:
    return service.list_(session, workspace, query, access)


@router.get("/{name}", response_model=Fileset)
def get_fileset(workspace: str, name: str, session: SessionDep) -> Fileset:
    return service.get(session, workspace, name)


@router.patch("/{name}", response_model=Fileset)
def update_fileset(workspace: str, name: str, body: UpdateFilesetRequest, session: SessionDep) -> Fileset:
    return service.update(session, workspace, name, body)


@router.delete("/{name}", response_model=Fileset)
def delete_fileset(workspace: str, name: str, session: SessionDep, request: Request) -> Fileset:
    """Delete the fileset and its files (200 with what was deleted); 409 while a model or adapter uses it."""
    return service.delete(session, request.app.state.settings, workspace, name)


@router.get("/{name}/files", response_model=FileList)
async def list_files(workspace: str, name: str, request: Request,
                     path: Annotated[str | None, Query(description="only this file or folder")] = None) -> FileList:
    state = request.app.state
    return await service.list_files(state.db, state.settings, workspace, name, path)


@router.put("/{name}/-/{path:path}", response_model=FileEntry,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_file(workspace: str, name: str, path: str, request: Request) -> FileEntry:
    """Upload one file as the raw request body, streamed. Send ``Content-Digest: sha-256=:<b64>:`` or
    ``X-Checksum-Sha256`` to have the server refuse a corrupted body (400, nothing stored)."""
    state = request.app.state
    return await service.upload(state.db, state.settings, workspace, name, path, request)


def _headers(item, size: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Accept-Ranges": "bytes", "ETag": f'"{item.sha256}"', "Content-Length": str(size),
            **download_headers(item.path)}


@router.get("/{name}/-/{path:path}", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a byte range"}})
async def download_file(workspace: str, name: str, path: str, request: Request) -> Response:
    """Download a file; ``Range: bytes=a-b`` gives 206 with that part (how interrupted downloads resume)."""
    state = request.app.state
    located, item = await service.file_info(state.db, state.settings, workspace, name, path)
    if request.headers.get("if-none-match") == f'"{item.sha256}"':
        return Response(status_code=304, headers={"ETag": f'"{item.sha256}"'})
    span = service.parse_range(request.headers.get("range"), item.size) if item.size else None
    start, end = span if span else (0, item.size - 1)
    # open the blob the row names now, before the 200 goes out: an unreachable bucket is a clear 502,
    # not a cut stream, and a PUT that lands meanwhile points the path elsewhere without touching it
    handle = await service.open_blob(located, item, f"{workspace}/{name}")
    headers = _headers(item, end - start + 1 if item.size else 0)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{item.size}"
    body = _stream(handle, start, end) if item.size else _stream(handle, 0, -1)
    return StreamingResponse(body, status_code=206 if span else 200, headers=headers,
                             media_type="application/octet-stream")


def _stream(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` inclusive of an open blob, in chunks; the handle is closed at the end."""
    try:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data
    finally:
        handle.close()


@router.head("/{name}/-/{path:path}")
async def head_file(workspace: str, name: str, path: str, request: Request) -> Response:
    state = request.app.state
    _, item = await service.file_info(state.db, state.settings, workspace, name, path)
    return Response(status_code=200, headers=_headers(item, item.size), media_type="application/octet-stream")


@router.delete("/{name}/-/{path:path}", response_model=FileEntry)
async def delete_file(workspace: str, name: str, path: str, request: Request) -> FileEntry:
    """Delete one file; 200 with the deleted file, as the reference answers."""
    state = request.app.state
    return await service.delete_file(state.db, state.settings, workspace, name, path)
